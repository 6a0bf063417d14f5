"""The speed ladder: vanilla -> mixed precision -> compiled -> flash attention, then `auto`.

Each rung runs in a fresh process, so compile caches, allocator state and peak memory of one
rung never flatter or burden the next. Timings are medians of full training steps (forward,
backward, fused AdamW) on random tokens, after warm-up, with the device synchronised.
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace

import gguf
import torch

from bladegpt.config import ModelConfig, TrainConfig, from_preset
from bladegpt.tokenizer.bpe import DEFAULT_BPE_VOCAB
from bladegpt.errors import ConfigError
from bladegpt.model import GPT, flops_per_token
from bladegpt.train.optim import make_optimizers
from bladegpt.runtime import (
    autocast,
    bf16_supported,
    choose_attention,
    choose_precision,
    compile_available,
    cpu_bf16_supported,
    device_name,
    peak_flops,
    raise_cpu_peak,
    resolve_device,
    set_matmul_precision,
    synchronize,
)
from bladegpt.export.hf import hf_config, hf_state_dict, llama_hf_config, llama_hf_state_dict
from bladegpt.sources import gguf_path, load_pretrained
from bladegpt.generate.engine import compile_decode, generate_batch
from bladegpt.generate.quantize import int4_available, int8_available
from bladegpt.generate.sampler import decode_precision, in_precision
from bladegpt.train.recipes import FINETUNE_BLOCK

WARMUP_STEPS = 2


def default_vocab(preset: str) -> int:
    """The vocabulary `train` would see: GPT-2's (padded) for gpt2, else prepare's default BPE."""
    return ModelConfig.vocab_size if preset == "gpt2" else DEFAULT_BPE_VOCAB


@dataclass(frozen=True)
class Rung:
    name: str
    label: str
    precision: str
    attention: str
    compile: bool


def ladder(device: torch.device, shape: tuple[int, int, int, int], dropout: float = 0.0) -> list[Rung]:
    """The lecture's rungs, each adding to the one before, and what `train` would pick here."""
    # Where bf16 cannot run, the rungs after it add their step to fp32 instead.
    mixed = "bf16" if unavailable_reason(Rung("", "", "bf16", "manual", False), device) is None else "fp32"
    auto_precision = choose_precision(device)
    auto_compile, _ = compile_available(device)
    auto_attention = choose_attention(device, auto_precision, shape, "auto", dropout)
    auto_label = f"train's pick: {auto_precision}, {auto_attention}, {'compiled' if auto_compile else 'eager'}"
    return [
        Rung("vanilla", "fp32, manual attention, eager", "fp32", "manual", False),
        Rung("mixed", "+ TF32 and bf16 autocast" if device.type == "cuda" else "+ bf16 autocast", "bf16", "manual", False),
        Rung("compile", "+ torch.compile", mixed, "manual", True),
        Rung("flash", "+ flash attention (SDPA)", mixed, "sdpa", True),
        Rung("auto", auto_label, auto_precision, auto_attention, auto_compile),
    ]


def selected(rungs: list[Rung], names: list[str] | None) -> list[Rung]:
    """The rungs named (all without names); a rung whose rung before it is left out says its whole setup, not
    '+ flash attention' over a rung the table does not show (--rungs vanilla,flash: flash is compiled too)."""
    kept = []
    for before, rung in zip([None, *rungs], rungs):
        if names and rung.name not in names:
            continue
        if rung.label.startswith("+") and (not kept or kept[-1].name != before.name):
            rung = replace(rung, label=f"{rung.precision}, {rung.attention} attention, "
                                       f"{'compiled' if rung.compile else 'eager'}")
        kept.append(rung)
    return kept


def unavailable_reason(rung: Rung, device: torch.device) -> str | None:
    if rung.precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return "this GPU has no bf16"
        if device.type == "cpu" and not cpu_bf16_supported():
            return "this CPU has no bf16 support"
        if device.type not in ("cuda", "cpu"):
            return f"bf16 autocast is not supported on {device.type} here"
    if rung.compile:
        ok, why = compile_available(device)
        if not ok:
            return why
    return None


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def run_rung(rung: Rung, model_cfg: ModelConfig, batch: int, steps: int, device_str: str) -> dict:
    """Time `steps` training steps of one rung (meant to run in its own process)."""
    device = torch.device(device_str)
    set_matmul_precision(device, allow_tf32=rung.precision != "fp32")
    base_mem = _memory_mb(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    model = GPT(model_cfg, attention=rung.attention).to(device)
    optimizers = make_optimizers(model, TrainConfig(), device)  # the optimizer `train` uses by default
    if rung.compile:
        model.compile_blocks()  # as train compiles: each block (regional compilation)
    forward = model
    x = torch.randint(0, model_cfg.vocab_size, (batch, model_cfg.block_size), device=device)
    y = torch.randint(0, model_cfg.vocab_size, (batch, model_cfg.block_size), device=device)
    times = []
    for _ in range(WARMUP_STEPS + steps):
        synchronize(device)
        t0 = time.perf_counter()
        with autocast(device, rung.precision):
            _, loss = forward(x, y)
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    timed = times[WARMUP_STEPS:]
    median = statistics.median(timed)
    return {
        "ms_per_step": median * 1e3,
        "ms_min": min(timed) * 1e3,
        "ms_max": max(timed) * 1e3,
        "compile_s": max(0.0, sum(times[:WARMUP_STEPS]) - WARMUP_STEPS * median) if rung.compile else None,
        "peak_mem_mb": _memory_mb(device) - (0.0 if device.type == "cuda" else base_mem),
    }


def bench(
    preset: str = "mini",
    batch: int | None = None,
    block: int | None = None,
    steps: int = 10,
    device: str = "auto",
    rungs: list[str] | None = None,
    vocab_size: int | None = None,
    on_rung=None,
) -> dict:
    """Run the ladder and return its numbers; `on_rung(row)` sees each row as it is measured."""
    dev = resolve_device(device)
    if block is not None and block < 1:  # ModelConfig would name train's flag, --block-size
        raise ConfigError(f"--block (the context length) must be at least 1, got {block}.")
    model_cfg, train_cfg = from_preset(preset, {"block_size": block})
    model_cfg.vocab_size = vocab_size or default_vocab(preset)
    batch = batch if batch is not None else train_cfg.batch_size
    if batch < 1 or steps < 1:
        raise ConfigError(f"--batch and --steps must be at least 1, got batch {batch} and steps {steps}.")
    all_rungs = ladder(dev, model_cfg.attention_shape(batch), model_cfg.dropout)
    names = [r.name for r in all_rungs]
    unknown = sorted(set(rungs or []) - set(names))
    if unknown:
        raise ConfigError(f"Unknown rung(s) {', '.join(map(repr, unknown))}; choose from: {', '.join(names)}.")
    chosen = selected(all_rungs, rungs)
    n_params = GPT(model_cfg).num_params()
    tokens = batch * model_cfg.block_size
    flops = flops_per_token(model_cfg, n_params) * tokens
    peak = peak_flops(dev)
    rows = []
    context = multiprocessing.get_context("spawn")
    for rung in chosen:
        row = {**asdict(rung), "available": True, "reason": None}
        reason = unavailable_reason(rung, dev)
        if reason:
            row.update(available=False, reason=reason, ms_per_step=None, tok_per_s=None, speedup=None, mfu=None)
        else:
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                row.update(pool.submit(run_rung, rung, model_cfg, batch, steps, str(dev)).result())
            seconds = row["ms_per_step"] / 1e3
            row["tok_per_s"] = tokens / seconds
            if dev.type == "cpu" and flops / seconds > peak:  # the cached peak read low: taken again, and never below
                peak = raise_cpu_peak(flops / seconds)
                for earlier in rows:
                    earlier["mfu"] = flops / (earlier["ms_per_step"] / 1e3) / peak if earlier["available"] else None
            row["mfu"] = flops / seconds / peak if math.isfinite(peak) else None
        vanilla = next((r for r in [*rows, row] if r["name"] == "vanilla" and r["available"]), None)
        row["speedup"] = vanilla["ms_per_step"] / row["ms_per_step"] if vanilla and row.get("ms_per_step") else None
        if rows and row.get("ms_per_step") and rows[-1].get("ms_per_step"):
            row["slower_than_previous"] = row["ms_per_step"] > rows[-1]["ms_per_step"]
        rows.append(row)
        if on_rung:
            on_rung(row)
    return {
        "device": device_name(dev),
        "peak_flops": peak,
        "preset": preset,
        "model": model_cfg.to_dict(),
        "params": n_params,
        "batch": batch,
        "block": model_cfg.block_size,
        "steps": steps,
        "torch": torch.__version__,
        "rungs": rows,
    }


def _hf_twin(model: GPT):
    """The same model as transformers' GPT2LMHeadModel, or LlamaForCausalLM / Qwen2ForCausalLM /
    Qwen3ForCausalLM for the Llama family, built from what `export --format hf` writes."""
    import transformers

    if model.config.arch == "gpt2":
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config.from_dict(hf_config(model, stop_ids=())))
        state = hf_state_dict(model)
    else:
        settings = llama_hf_config(model, bos=None, eos=None)
        config = transformers.AutoConfig.for_model(settings.pop("model_type"), **settings)
        hf = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
        state = llama_hf_state_dict(model)
    hf.load_state_dict({k: v.to(hf.device) for k, v in state.items()}, strict=False)
    return hf.to(model.transformer.wte.weight.device).eval()


def source_model(source: str, block: int) -> GPT:
    """A pretrained model (any --init-from source) with its context cut to `block`, as a fine-tune has it."""
    model = load_pretrained(source).model
    if model.config.block_size > block:
        if "wpe" in model.transformer:
            model.transformer.wpe.weight.data = model.transformer.wpe.weight.data[:block]
        model.config.block_size = block
        model.reset_buffers()
    return model


LLAMA_CPP = "llama.cpp (llama-cpp-python)"


def llama_cpp_peer(source: str | None, prompt: list[int], new_tokens: int):
    """llama.cpp on the same GGUF file, greedy from the same prompt ids for `new_tokens` tokens, on PyTorch's
    thread count: (a function running one generation, the file's type such as Q4_1, None), or (None, None, why
    it has no row)."""
    path = gguf_path(source) if source is not None else None
    if path is None:
        return None, None, "llama.cpp has no row: it reads a GGUF file, so time one with --init-from FILE.gguf"
    try:
        import llama_cpp
    except ImportError:
        return None, None, "llama.cpp has no row: llama-cpp-python is not installed (pip install llama-cpp-python)"
    threads = torch.get_num_threads()
    try:
        llm = llama_cpp.Llama(str(path), n_ctx=len(prompt) + new_tokens, n_batch=max(len(prompt), 8),
                              n_threads=threads, n_threads_batch=threads, verbose=False)
    except ValueError as e:  # llama.cpp could not read a file BladeGPT reads (an architecture it lacks)
        return None, None, f"llama.cpp has no row: it could not load {path} ({e})"

    def run() -> list[int]:
        llm.reset()  # no prefix reuse from the last run: every run evaluates the prompt, as ours do
        return list(itertools.islice(llm.generate(prompt, temp=0.0, top_k=1), new_tokens))

    file_type = llm.metadata.get("general.file_type")
    kind = gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_") if file_type else "gguf"
    return run, kind, None


def bench_generate(
    preset: str = "mini", device: str = "auto", new_tokens: int = 100, samples: tuple[int, ...] = (1, 8),
    repeats: int = 5, vocab_size: int | None = None, source: str | None = None,
) -> dict:
    """Generation tokens/s (all samples together) of BladeGPT beside transformers' `generate` on the
    same weights: greedy for one sample, top-k sampling for several. BladeGPT runs at the precision
    `sample` picks here and at the others this device runs (fp32, bf16, int8 and int4 weights), and compiled
    at the picked one (what `sample --compile` runs; its one-time compile is reported apart);
    transformers in fp32. Medians of `repeats` runs,
    the contenders alternating so a slow spell of the machine hits all of them. `source` times a
    pretrained model (any --init-from source, e.g. SmolLM2's GGUF) instead of the preset's shape."""
    dev = resolve_device(device)
    torch.manual_seed(0)
    if source is not None:
        model = source_model(source, FINETUNE_BLOCK).to(dev).eval()
        model_cfg = model.config
        vocab_size = model_cfg.vocab_size
    else:
        model_cfg, _ = from_preset(preset)
        model_cfg.vocab_size = vocab_size = vocab_size or default_vocab(preset)
        model = GPT(model_cfg).to(dev).eval()
    prompt = torch.randint(0, vocab_size, (4,)).tolist()
    new_tokens = min(new_tokens, model_cfg.block_size - len(prompt))  # transformers' GPT-2 cannot slide past it
    chosen = decode_precision(model, dev)
    runnable = {"fp32": True, "bf16": bf16_supported(dev), "int8": int8_available(dev), "int4": int4_available(dev)}
    precisions = [chosen] + [p for p, ok in runnable.items() if ok and p != chosen]
    sampling = dict(temperature=0.8, top_k=200)

    variants = {p: (*in_precision(model, p, cast=True), None) for p in precisions}  # as `sample` runs it

    def ours(variant: str, n: int):
        settings = dict(temperature=0) if n == 1 else sampling
        gens = [torch.Generator(dev).manual_seed(i) for i in range(n)]
        weights, context, decode = variants[variant]
        with context:
            for _ in generate_batch(weights, prompt, new_tokens, vocab_size, gens, decode=decode, **settings):
                pass

    contenders = {(f"BladeGPT{' (auto)' if p == chosen else ''}", p): lambda n, p=p: ours(p, n) for p in precisions}
    compile_s = None
    if compile_available(dev)[0]:
        weights, context, _ = variants[chosen]
        variants["compiled"] = weights, context, compile_decode(weights)
        start = time.perf_counter()
        for n in samples:  # compiles the decode step for each batch size
            ours("compiled", n)
        compile_s = time.perf_counter() - start
        contenders[("BladeGPT compiled", chosen)] = lambda n: ours("compiled", n)
    try:
        hf = _hf_twin(model)
        ids = torch.tensor([prompt], device=dev)

        def theirs(n: int):
            settings = dict(do_sample=False) if n == 1 else dict(do_sample=True, **sampling)
            with torch.inference_mode():
                hf.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_return_sequences=n,
                            pad_token_id=0, **settings)

        contenders[("transformers generate", "fp32")] = theirs
        peer = None
    except ImportError:
        peer = "transformers is not installed (pip install transformers) so it has no rows"
    llama, kind, llama_reason = llama_cpp_peer(source, prompt, new_tokens)
    if llama is not None:
        contenders[(LLAMA_CPP, kind)] = lambda n: llama()  # one sample only
    rows = []
    for n in samples:
        running = {key: fn for key, fn in contenders.items() if n == 1 or key[0] != LLAMA_CPP}
        for fn in running.values():  # warm-up
            fn(n)
        times = {key: [] for key in running}
        for _ in range(repeats):
            for key, fn in running.items():
                synchronize(dev)
                t0 = time.perf_counter()
                fn(n)
                synchronize(dev)
                times[key].append(time.perf_counter() - t0)
        for (who, precision), t in times.items():
            rows.append({"generator": who, "precision": precision, "samples": n,
                         "tok_per_s": n * new_tokens / statistics.median(t)})
    return {"device": device_name(dev), "preset": source or preset, "block": model_cfg.block_size, "vocab": vocab_size,
            "new_tokens": new_tokens, "prompt_tokens": len(prompt), "repeats": repeats, "torch": torch.__version__,
            "decode_precision": chosen, "compile_s": compile_s, "peer": peer, "llama_cpp": llama_reason, "rows": rows}
