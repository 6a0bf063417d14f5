"""`bladegpt train`: the flags gathered into one call of bladegpt.train.train, the live display, the last line."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from bladegpt.cli.app import app, console, friendly

@app.command()
@friendly
def train(
    data: Annotated[Optional[Path], typer.Option(help="Dataset folder \\[default: the latest prepared; on --resume, the run's own: name it only where you moved it].")] = None,
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
    context_weight: Annotated[Optional[float], typer.Option(help="On a speaker's dataset (prepare --speaker): what the other speakers' and the action's tokens count for in the loss beside the speaker's own (0: their lines only; 1: the whole text) \\[default: 0.3 on a speaker's dataset; on --resume, the run's own].")] = None,
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
    attention: Annotated[Optional[str], typer.Option(help="auto, manual, sdpa or chunked (docs/training.md) \\[default: auto; on --resume, the run's own].")] = None,
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
    from bladegpt.cli.display import TrainDisplay
    from bladegpt.train.distributed import Distributed
    from bladegpt.train import train as train_model
    from bladegpt.lora import lora_config

    adapters = lora_config(lora, lora_rank, lora_alpha, lora_dropout, lora_targets, lora_base_dtype)
    model = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, dropout=dropout, block=block)
    budget = parse_duration(time) if time else None
    if budget is not None and steps is None:
        steps = CLOCK_STEPS  # the clock decides
    training = dict(batch_size=batch_size, accum=accum, lr=lr, optimizer=optimizer, muon_lr=muon_lr,
                    steps=steps, time_budget_s=budget,
                    warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio, weight_decay=weight_decay, sampling=sampling, token_noise=token_noise,
                    context_weight=context_weight, ema=ema,
                    activation_checkpointing=activation_checkpointing,
                    eval_interval=eval_interval, eval_iters=eval_iters, patience=patience,
                    log_interval=log_interval, sample_tokens=sample_tokens, seed=seed)
    result = train_model(data=data, preset=preset, model_overrides=model, train_overrides=training, device=device,
                         precision=precision, attention=attention, compile=compile, resume=resume, run=run,
                         reporter=TrainDisplay(console), init_from=init_from, tracker=tracker, lora=adapters)
    if result.interrupted:
        raise typer.Exit(code=130)
    if not Distributed.from_env().main:
        return  # under torchrun, rank 0 speaks for all
    from bladegpt.train.pacing import duration
    from bladegpt.runs import summarize

    run = summarize(result.run_dir)
    best = "no evaluation"
    if run["best_val_bpb"] is not None:
        best = (f"best val {run['best_val_bpb']:.3f} bits per byte (loss {run['best_val_loss']:.4f}) "
                f"at step {run['best_step']:,}")
    run_dir = escape(shlex.quote(str(result.run_dir)))  # pasted into a shell: a space in a name is quoted
    try:  # a speaker's voice (prepare --speaker) records the scene it opens
        voice = json.loads((result.run_dir / "run.json").read_text(encoding="utf-8")).get("opening")
    except (OSError, ValueError, AttributeError):
        voice = None
    after = (f"[bold]bladegpt chat --checkpoint {run_dir}[/] to talk with the voice, or [bold]bladegpt sample "
             f"--checkpoint {run_dir}[/] to watch it open a scene." if voice else
             f"[bold]bladegpt sample --checkpoint {run_dir}[/], with your opening words after it.")
    console.print(f"Done: step {result.step:,}, {best}, {duration(result.elapsed_s)}. Next: {after}")
