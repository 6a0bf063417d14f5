"""The `bladegpt` command: parse flags, call one library function, print. No torch at import."""

from __future__ import annotations

import functools
import random
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from bladegpt import __version__
from bladegpt.errors import UserError

app = typer.Typer(
    help="Train a small GPT on text you love, on the machine you have, and sample in its voice.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

# Options several commands share (sample, chat, export, bench).
CheckpointOpt = Annotated[Optional[Path], typer.Option(help="A .safetensors file or run folder \\[default: latest run's best].")]
TemperatureOpt = Annotated[float, typer.Option(help="0 is greedy; higher is wilder.")]
TopKOpt = Annotated[Optional[int], typer.Option(help="Sample only from the k likeliest tokens.")]
TopPOpt = Annotated[Optional[float], typer.Option(help="Sample only from the smallest set with this much probability.")]
MinPOpt = Annotated[Optional[float], typer.Option(help="Sample only tokens at least this share as likely as the likeliest, e.g. 0.05.")]
RepetitionOpt = Annotated[Optional[float], typer.Option(help="Discourage ids already in the text: their logits divided (or, if negative, multiplied) by this, e.g. 1.2 (CTRL's; off by default).")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")]
DecodePrecisionOpt = Annotated[str, typer.Option(help="auto (the fastest here for generation, measured), bf16, fp32, int8 (weights in int8, a quarter of fp32's bytes) or int4 (an eighth, CPU only; it can round away much of a fine-tune, docs/benchmarks.md).")]
DecodeCompileOpt = Annotated[str, typer.Option(help="auto (compile the decode step when the tokens asked for repay it), on or off.")]


# Options that take one word of a fixed list (or, as --block and --device, words of one): read in any case.
CHOICES = {"tokenizer", "preset", "block", "optimizer", "sampling", "device", "precision", "attention", "compile",
           "tracker", "lora_base_dtype", "frame", "format", "dtype"}


def friendly(command):
    """Read the CHOICES options' words in lower case; turn a UserError, or a file the system refused
    (permissions, a full disk), into one red line and exit code 1; Ctrl-C before work began into one line
    and 130. Anything else is a bug and keeps its traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        kwargs = {name: value.lower() if name in CHOICES and isinstance(value, str) else value
                  for name, value in kwargs.items()}
        try:
            return command(*args, **kwargs)
        except UserError as e:
            fail(str(e))
        except OSError as e:
            if e.filename is None:
                raise
            fail(f"Cannot write or read {e.filename}: {e.strerror}. Check its permissions and the free space "
                 "on its disk, then run the command again.")
        except KeyboardInterrupt:
            err_console.print("Stopped.", highlight=False)
            raise typer.Exit(code=130) from None

    return wrapper


def fail(message: str) -> None:
    err_console.print(f"[bold red]Error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # one line, however narrow the terminal
    raise typer.Exit(code=1) from None


def _version(value: bool) -> None:
    if value:
        console.print(f"bladegpt {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        Optional[bool], typer.Option("--version", help="Show the version and exit.", callback=_version, is_eager=True)
    ] = None,
) -> None:
    """Train a small GPT on text you love, on the machine you have, and sample in its voice."""
    from bladegpt.encoding import show_any_name

    show_any_name()  # a file name that is not UTF-8, or a terminal that cannot show a character, never fails a print


@app.command()
@friendly
def prepare(
    inputs: Annotated[list[Path], typer.Argument(help="Text files, or folders of .txt files.")],
    tokenizer: Annotated[str, typer.Option(help="bpe (trained on this corpus), gpt2, or char.")] = "bpe",
    tokenizer_from: Annotated[Optional[str], typer.Option(help="Encode with this model's tokenizer instead, for train --init-from: a Hugging Face repo id or folder (GPT-2, Llama, SmolLM2, Mistral, Qwen2, Qwen3), a .gguf file, ollama:NAME[:TAG], or a BladeGPT run.")] = None,
    vocab_size: Annotated[Optional[int], typer.Option(help="BPE vocabulary size \\[default: sized to the text, at most 4096].")] = None,
    val_fraction: Annotated[float, typer.Option(help="Share of the text kept for validation (its end).")] = 0.1,
    out: Annotated[Optional[Path], typer.Option(help="Dataset folder \\[default: datasets/NAME].")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the dataset already at the folder (earlier runs cannot resume on it).")] = False,
) -> None:
    """Turn text into a dataset: a tokenizer, train/val token files and their metadata."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
    from rich.table import Table

    from bladegpt.frames import Frame
    from bladegpt.prepare import prepare as prepare_data

    progress = Progress(TextColumn("[bold]encode"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=console, transient=True)
    task = progress.add_task("encode", total=None)

    def encoded(done: int, total: int) -> None:  # the bar starts with the encoding: a mistake found before it
        progress.start()                           # leaves no blank line above its one-line error
        progress.update(task, completed=done, total=total)

    try:
        result = prepare_data(inputs, out, tokenizer, vocab_size, val_fraction, progress=encoded, force=force,
                              tokenizer_from=tokenizer_from)
    finally:
        if progress.live.is_started:  # stopping one never started still prints a blank line
            progress.stop()
    for note in result.notes:
        console.print(note, style="yellow", highlight=False, soft_wrap=True, markup=False)
    m = result.meta
    table = Table(title=f"Prepared {', '.join(Path(s).name for s in m['sources'][:3])}"
                        + (f" and {len(m['sources']) - 3} more" if len(m["sources"]) > 3 else ""))
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    for label, value in [
        ("characters", f"{m['chars']:,}"),
        ("tokens", f"{m['train_tokens'] + m['val_tokens']:,}"),
        ("tokenizer", m["tokenizer"]),
        ("vocabulary", f"{m['vocab_size']:,}" + (" (sized to the text; --vocab-size N to choose)"
                                                  if vocab_size is None and m["tokenizer"] == "bpe" else "")),
        ("bytes per token", f"{m['bytes'] / (m['train_tokens'] + m['val_tokens']):.2f}"),
        ("train tokens", f"{m['train_tokens']:,}"),
        ("val tokens", f"{m['val_tokens']:,}"),
        ("chat frame", Frame.from_dict(m["chat_frame"]).describe()),
        ("took", f"{m['seconds']:.1f} s ({m['bytes'] / 1e6 / max(m['encode_seconds'], 1e-9):.1f} MB/s encoding)"),
        ("written to", str(result.out_dir)),
    ]:
        table.add_row(label, value)
    console.print(table)
    console.print("Next: [bold]bladegpt train[/] (it picks up this dataset).")


@app.command()
@friendly
def train(
    data: Annotated[Optional[Path], typer.Option(help="Dataset folder \\[default: the latest prepared].")] = None,
    preset: Annotated[Optional[str], typer.Option(help="nano, mini, small or gpt2 (docs/training.md) \\[default: mini].")] = None,
    init_from: Annotated[Optional[str], typer.Option(help="Start from a pretrained model: a Hugging Face repo id or folder (gpt2, HuggingFaceTB/SmolLM2-135M, Llama 3.x, Qwen2/2.5/3...), a .gguf file, ollama:NAME[:TAG], or a BladeGPT run or checkpoint.")] = None,
    n_layer: Annotated[Optional[int], typer.Option(help="Transformer blocks.")] = None,
    n_head: Annotated[Optional[int], typer.Option(help="Attention heads.")] = None,
    n_embd: Annotated[Optional[int], typer.Option(help="Embedding width.")] = None,
    block_size: Annotated[Optional[int], typer.Option(help="Context length in tokens.")] = None,
    dropout: Annotated[Optional[float], typer.Option(help="Dropout rate.")] = None,
    block: Annotated[Optional[str], typer.Option(help="gpt2 (GPT-2's block: learned positions, LayerNorm, GELU), modern, or changes joined with +: rope, rmsnorm, qk-norm, swiglu, relu2, zero-init, softcap \\[default: modern from scratch, gpt2 with a --preset; a fine-tune keeps its model's].")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Sequences per optimizer step (the batch the optimizer sees).")] = None,
    accum: Annotated[Optional[int], typer.Option(help="Split each step's batch into N micro-batches: same training, less memory.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (AdamW's).")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="adamw, or muon: Muon for the blocks' matrices, fewer steps to a loss.")] = None,
    muon_lr: Annotated[Optional[float], typer.Option(help="Muon's peak learning rate \\[default: 0.05].")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Optimizer steps.")] = None,
    time: Annotated[Optional[str], typer.Option("--time", help="Train for a time instead, e.g. 10m.")] = None,
    warmup_steps: Annotated[Optional[int], typer.Option(help="Linear warmup steps.")] = None,
    min_lr_ratio: Annotated[Optional[float], typer.Option(help="The cosine schedule ends at lr times this (1: a constant lr).")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help="Decoupled weight decay on the matrices (AdamW's, and Muon's where it trains them) \\[default: 0.3 from scratch, 0 for a fine-tune, 0.1 with a --preset].")] = None,
    sampling: Annotated[Optional[str], typer.Option(help="How a step's windows are drawn: random (anywhere, with replacement, as nanoGPT) or epochs (each pass reads every window of the text once, in a random order) \\[default: epochs for a fine-tune, random from scratch].")] = None,
    token_noise: Annotated[Optional[float], typer.Option(help="Replace this share of the input tokens by tokens drawn from the text's own frequencies (unigram noising; the targets stay) \\[default: 0.2 from scratch on a text under 250 KB; else 0].")] = None,
    ema: Annotated[Optional[float], typer.Option(help="Evaluate and keep an average of the weights, updated each step with this decay (0.95 averages about the last 20 steps); 0 = off.")] = None,
    activation_checkpointing: Annotated[Optional[bool], typer.Option("--activation-checkpointing", help="Recompute each block's activations in backward: about a third more compute, memory for long blocks.")] = None,
    eval_interval: Annotated[Optional[int], typer.Option(help="Evaluate every N steps.")] = None,
    eval_iters: Annotated[Optional[int], typer.Option(help="Batches per evaluation.")] = None,
    patience: Annotated[Optional[int], typer.Option(help="Stop after N evaluations without a better val loss (0: never) \\[default: 3].")] = None,
    log_interval: Annotated[Optional[int], typer.Option(help="Log every N steps.")] = None,
    sample_tokens: Annotated[Optional[int], typer.Option(help="Tokens sampled at each eval (0: none).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu, cuda, cuda:1 or mps \\[default: auto; on --resume, the run's own].")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto, bf16 or fp32 \\[default: auto; on --resume, the run's own].")] = None,
    attention: Annotated[Optional[str], typer.Option(help="auto, manual or sdpa \\[default: auto; on --resume, the run's own].")] = None,
    compile: Annotated[Optional[str], typer.Option(help="auto, on or off (auto: only if the run repays it) \\[default: auto; on --resume, the run's own].")] = None,
    run: Annotated[Optional[Path], typer.Option(help="Run folder \\[default: runs/DATASET-N, a new one].")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the given (or latest) run exactly.")] = False,
    tracker: Annotated[Optional[str], typer.Option(help="Also log the run to tensorboard or wandb (needs pip install 'bladegpt\\[tensorboard]' or 'bladegpt\\[wandb]'; WANDB_MODE=offline keeps W&B local).")] = None,
    lora: Annotated[bool, typer.Option("--lora", help="With --init-from: keep the model frozen and train LoRA adapters (small checkpoints, a fraction of the memory; lr 10x by default).")] = False,
    lora_rank: Annotated[Optional[int], typer.Option(help="LoRA's rank \\[default: 16].")] = None,
    lora_alpha: Annotated[Optional[float], typer.Option(help="LoRA's alpha; adapters are scaled by alpha / rank \\[default: 2 x rank].")] = None,
    lora_dropout: Annotated[Optional[float], typer.Option(help="Dropout on the adapters' input \\[default: 0.05].")] = None,
    lora_targets: Annotated[Optional[str], typer.Option(help="Comma-separated linears to adapt \\[default: attn.c_attn,attn.c_proj,mlp.c_fc,mlp.c_proj, all].")] = None,
    lora_base_dtype: Annotated[Optional[str], typer.Option(help="bf16 (half the memory) or fp32: how the frozen base's matrices are stored \\[default: bf16].")] = None,
) -> None:
    """Train a GPT on a prepared dataset, with a live display; Ctrl-C saves and stops."""
    from bladegpt.config import CLOCK_STEPS, parse_duration
    from bladegpt.display import TrainDisplay
    from bladegpt.distributed import Distributed
    from bladegpt.launch import train as train_model
    from bladegpt.lora import lora_config

    adapters = lora_config(lora, lora_rank, lora_alpha, lora_dropout, lora_targets, lora_base_dtype)
    model = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, dropout=dropout, block=block)
    budget = parse_duration(time) if time else None
    if budget is not None and steps is None:
        steps = CLOCK_STEPS  # the clock decides
    training = dict(batch_size=batch_size, accum=accum, lr=lr, optimizer=optimizer, muon_lr=muon_lr,
                    steps=steps, time_budget_s=budget,
                    warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio, weight_decay=weight_decay, sampling=sampling, token_noise=token_noise, ema=ema,
                    activation_checkpointing=activation_checkpointing,
                    eval_interval=eval_interval, eval_iters=eval_iters, patience=patience,
                    log_interval=log_interval, sample_tokens=sample_tokens, seed=seed)
    result = train_model(data, preset, model, training, device, precision, attention, compile, resume, run,
                         reporter=TrainDisplay(console), init_from=init_from, tracker=tracker, lora=adapters)
    if result.interrupted:
        raise typer.Exit(code=130)
    if not Distributed.from_env().main:
        return  # under torchrun, rank 0 speaks for all
    from bladegpt.pacing import duration
    from bladegpt.runs import summarize

    run = summarize(result.run_dir)
    best = "no evaluation"
    if run["best_val_bpb"] is not None:
        best = (f"best val {run['best_val_bpb']:.3f} bits per byte (loss {run['best_val_loss']:.4f}) "
                f"at step {run['best_step']:,}")
    console.print(f"Done: step {result.step:,}, {best}, {duration(result.elapsed_s)}. Next: [bold]bladegpt "
                  f"sample --checkpoint {escape(str(result.run_dir))}[/], with your opening words after it.")


@app.command()
@friendly
def sample(
    prompt: Annotated[str, typer.Argument(help="Text to continue.")] = "",
    checkpoint: CheckpointOpt = None,
    num_samples: Annotated[int, typer.Option(help="How many samples.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per sample.")] = 200,
    temperature: TemperatureOpt = 0.8,
    top_k: TopKOpt = 200,
    top_p: TopPOpt = None,
    min_p: MinPOpt = None,
    repetition_penalty: RepetitionOpt = None,
    seed: Annotated[Optional[int], typer.Option(help="Same seed, same text \\[default: random].")] = None,
    device: DeviceOpt = "auto",
    precision: DecodePrecisionOpt = "auto",
    compile: DecodeCompileOpt = "auto",
    copy_check: Annotated[Optional[bool], typer.Option("--copy-check/--no-copy-check", help="Say how much of the samples is copied verbatim from the training text \\[default: on where the run's dataset is at hand].", show_default=False)] = None,
) -> None:
    """Stream new text from a trained model (several samples are generated together, in one batch)."""
    from bladegpt import copymeter
    from bladegpt.encoding import read_typed
    from bladegpt.engine import check_settings
    from bladegpt.sampler import Sampler

    seed = random.randrange(2**31) if seed is None else seed
    prompt, note = read_typed(prompt, "prompt")
    if note:
        err_console.print(note, style="yellow", highlight=False, soft_wrap=True, markup=False)
    check_settings(num_samples, max_new_tokens, temperature, top_k, top_p, seed, min_p, repetition_penalty)
    sampler = Sampler(checkpoint, device, precision, compile, say=lambda line: err_console.print(line, style="dim"))
    err_console.print(f"[dim]{sampler.checkpoint} · seed {seed} · {sampler.precision}[/]", highlight=False)
    meter = copymeter.for_checkpoint(sampler.checkpoint) if copy_check is not False else None
    if copy_check and meter is None:
        err_console.print(f"No copy check: {sampler.checkpoint} is not in a run folder, so its training text is "
                          "not known.", style="dim", highlight=False, markup=False)
    current, texts = None, []
    for i, piece in sampler.samples(prompt, num_samples, max_new_tokens, temperature, top_k, top_p, seed, min_p,
                                    repetition_penalty):
        if i != current:
            if current is not None:
                sys.stdout.write("\n" + "-" * 40 + "\n")
            sys.stdout.write(prompt)
            current = i
            texts.append("")
        texts[-1] += piece
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if meter is not None:
        _copy_line(meter, texts)


def _copy_line(meter, texts: list[str]) -> None:
    """The copy meter's line after the samples, on stderr so that piped samples stay clean."""
    index = meter.wait(timeout=1.0)
    if meter.busy:
        err_console.print("Indexing the training text for the copy check, once for this dataset "
                          "(--no-copy-check skips it)...", style="dim", highlight=False)
        index = meter.wait()
    line = index.measure(texts).describe() if index is not None else f"No copy check: {meter.error}"
    err_console.print(line, style="dim", highlight=False, markup=False, soft_wrap=True)


@app.command()
@friendly
def chat(
    checkpoint: CheckpointOpt = None,
    frame: Annotated[Optional[str], typer.Option(help="How the talk is written: quotes (\"...\" lines), play (NAME: lines) or lines \\[default: the corpus's, found when it was prepared].")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 200,
    temperature: TemperatureOpt = 0.8,
    top_k: TopKOpt = 200,
    top_p: TopPOpt = None,
    min_p: MinPOpt = None,
    repetition_penalty: RepetitionOpt = None,
    seed: Annotated[Optional[int], typer.Option(help="Same seed and same lines, same conversation \\[default: random].")] = None,
    device: DeviceOpt = "auto",
    precision: DecodePrecisionOpt = "auto",
    compile: DecodeCompileOpt = "auto",
) -> None:
    """Talk with the voice: type a line, it answers in the text's voice. Ctrl-D or Ctrl-C ends."""
    from bladegpt.chat import Conversation, recorded_frame
    from bladegpt.encoding import keep_typed_bytes, read_typed
    from bladegpt.engine import check_settings
    from bladegpt.frames import check_kind, choose
    from bladegpt.sampler import Sampler

    seed = random.randrange(2**31) if seed is None else seed
    check_settings(1, max_new_tokens, temperature, top_k, top_p, seed, min_p, repetition_penalty)
    check_kind(frame)  # before the model loads
    sampler = Sampler(checkpoint, device, precision, compile, say=lambda line: err_console.print(line, style="dim"))
    chosen, source = choose(frame, recorded_frame(sampler.checkpoint), sampler.tokenizer.encode)
    talk = Conversation(sampler, chosen, seed, max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty)
    interactive = sys.stdin.isatty()
    keep_typed_bytes()
    err_console.print(f"{sampler.checkpoint} · frame {chosen.describe()} ({source}) · seed {seed}"
                      + (" · Ctrl-D to end" if interactive else ""), style="dim", highlight=False, markup=False)
    try:
        while True:
            try:
                line = input("> " if interactive else "")
            except EOFError:
                break
            if not line.strip():
                continue
            line, note = read_typed(line, "line")
            if note:
                err_console.print(note, style="yellow", highlight=False, soft_wrap=True, markup=False)
            try:
                pieces = talk.reply(line)
            except UserError as e:  # a line the tokenizer cannot take: say so, keep talking
                err_console.print(str(e), style="red", soft_wrap=True)
                continue
            for piece in pieces:
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
    except KeyboardInterrupt:
        pass
    if interactive:
        sys.stdout.write("\n")


@app.command()
@friendly
def bench(
    preset: Annotated[str, typer.Option(help="Model to time \\[default: the one `train` uses].")] = "mini",
    batch: Annotated[Optional[int], typer.Option(help="Sequences per step \\[default: the preset's].")] = None,
    block: Annotated[Optional[int], typer.Option(help="Context length \\[default: the preset's].")] = None,
    steps: Annotated[int, typer.Option(help="Timed steps per rung, after 2 warm-up steps.")] = 10,
    device: DeviceOpt = "auto",
    rungs: Annotated[Optional[str], typer.Option(help="Comma-separated subset: vanilla,mixed,compile,flash,auto.")] = None,
    generate: Annotated[bool, typer.Option("--generate", help="Time generation instead, beside transformers' generate.")] = False,
    init_from: Annotated[Optional[str], typer.Option(help="With --generate: time this pretrained model (a GGUF file, ollama:NAME, a Hugging Face folder or hub id) instead of the preset.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON, nothing else.")] = False,
) -> None:
    """Time training steps up the speed ladder on this machine (random tokens, no dataset needed)."""
    from bladegpt import bench as benchmark, strictjson
    from bladegpt.report import bench_table, generate_table

    if init_from is not None and not generate:
        fail("--init-from times generation of that model: add --generate (the training step beside "
             "transformers' is scripts/finetune_bench.py).")
    if generate:
        result = benchmark.bench_generate(preset, device=device, source=init_from)
        if json_out:
            print(strictjson.dumps(result, indent=2))
        else:
            console.print(generate_table(result))
        return
    names = [r.strip() for r in rungs.split(",")] if rungs else None
    if json_out:
        print(strictjson.dumps(benchmark.bench(preset, batch, block, steps, device, names), indent=2))
        return
    with console.status("Measuring (each rung runs in a fresh process; compiles take a while)..."):
        result = benchmark.bench(preset, batch, block, steps, device, names,
                                 on_rung=lambda row: console.print(f"  measured [bold]{row['name']}[/]"))
    console.print(bench_table(result))


@app.command("runs")
@friendly
def runs_table(
    paths: Annotated[Optional[list[Path]], typer.Argument(help="Run folders, or folders of runs \\[default: runs/; with --plot, the latest run].", show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the runs as JSON, nothing else.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", metavar="FILE.png", help="Draw the runs' train and val curves against step and wall time into this PNG (needs pip install 'bladegpt\\[plot]').")] = None,
    bpb: Annotated[bool, typer.Option("--bpb", help="With --plot: bits per byte instead of loss, comparable across tokenizers.")] = False,
) -> None:
    """Compare runs at a glance: how each started, how far it got, its best val loss, its state."""
    from bladegpt import strictjson
    from bladegpt.report import runs_table as table
    from bladegpt.runs import RUNS_DIR, latest_run, run_folders, summarize

    if bpb and plot is None:
        raise UserError("--bpb sets the unit of --plot's curves; add --plot FILE.png, or drop --bpb.")
    if plot is not None:
        from bladegpt.plot import check_out, plot as draw

        check_out(plot)  # before looking for runs: a wrong file name is the first thing to say
        written = draw(run_folders(paths) if paths else [latest_run()], plot, bpb)
        console.print(f"Wrote {written}.")
        return
    found = [summarize(p) for p in run_folders(paths or [RUNS_DIR])]
    if json_out:
        print(strictjson.dumps(found, indent=2))
    elif not found:
        console.print(f"No runs in {', '.join(f'{p}/' for p in paths or [RUNS_DIR])} yet; start one with `bladegpt train`.")
    else:
        console.print(table(found, console.width))


@app.command()
@friendly
def export(
    out: Annotated[Path, typer.Argument(help="Folder (hf, peft), or .safetensors or .gguf file to write.")],
    checkpoint: CheckpointOpt = None,
    format: Annotated[str, typer.Option("--format", help="hf (a transformers folder), safetensors (one file), "
                                        "gguf (llama.cpp, ollama, LM Studio), or peft (a LoRA run's adapters alone); "
                                        "a LoRA run's adapters are merged into the others.")] = "hf",
    dtype: Annotated[Optional[str], typer.Option(help="GGUF weights: f32, f16, bf16, q8_0, q4_0 or q4_1 \\[default: f16].")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier export at OUT.")] = False,
) -> None:
    """Hand a trained model to the rest of the ecosystem (transformers, llama.cpp, or one file)."""
    from bladegpt.export import export as export_model

    written = export_model(out, checkpoint, format, force, dtype,
                           warn=lambda line: console.print(line, style="yellow", soft_wrap=True))
    if format == "hf":
        console.print(f"Wrote {written}/. Load it with:\n"
                      f"  AutoModelForCausalLM.from_pretrained(\"{written}\"), AutoTokenizer.from_pretrained(\"{written}\")", soft_wrap=True)
    elif format == "peft":
        console.print(f"Wrote {written}/ (adapter_model.safetensors, adapter_config.json). Load it onto its base with:\n"
                      f"  PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), \"{written}\"); "
                      f"for llama.cpp: convert_lora_to_gguf.py {written} --base BASE_FOLDER", soft_wrap=True)
    elif format == "gguf":
        console.print(f"Wrote {written}. Run it with llama.cpp:  llama-cli -m {written} -p \"Your prompt\"\n"
                      f"or ollama: a Modelfile holding `FROM ./{written.name}`, then  ollama create my-voice -f Modelfile", soft_wrap=True)
    else:
        console.print(f"Wrote {written}. Sample from it with: bladegpt sample --checkpoint {written}", soft_wrap=True)


def main() -> None:
    app()
