"""A checkpoint made ready to generate: its device, the precision that decodes fastest here, and
many samples in one batch."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from bladegpt.generate.engine import (
    KVCache,
    compile_decode,
    generate_batch,
    last_logits,
    prompt_ids,
    sample_text,
    stream_text,
    until_stop,
)
from bladegpt.data import copymeter
from bladegpt.generate.nocopy import NoCopy
from bladegpt.model import GPT
from bladegpt.generate.quantize import QUANTIZED, int4_available, int8_available, packed_refusal, quantize
from bladegpt.generate.settings import SampleSettings
from bladegpt.runtime import cached, autocast, bf16_supported, choose_precision, cpu_model, resolve_device
from bladegpt.errors import DeviceError, UserError
from bladegpt.sources import load_bladegpt
from bladegpt.runs import resolve_checkpoint

COMPILE_MODES = ("auto", "on", "off")
# What generation can run in: training's precisions, and int8 or int4 weights (quantize.py) for a model
# that is generation's alone.
DECODE_PRECISIONS = ("auto", "bf16", "fp32", *QUANTIZED)
# Compiling the decode step over a static cache (engine.compile_decode), measured on a 2-core Xeon
# for the mini shape (6 layers): 18 s a batch size with a cold inductor cache (3 s warm); a step 27-37%
# shorter for one sample, 11% for eight. The graph holds every layer, so the cost grows with depth:
# SmolLM2-135M (30 layers) took 152 s for two batch sizes on a 2-core EPYC. `auto` compiles only when
# the steps ahead repay the cold compile, estimated per layer.
DECODE_COMPILE_COST_S_PER_LAYER = {"cpu": 3.0, "cuda": 7.5}
CACHE_BYTES = 256 * 2**20  # most KV cache one batch of samples may hold; more samples run in turns
MAX_BATCH = 64


def compile_gain(rows: int) -> float:
    """The share of a decode step compiling saves, as measured (above)."""
    return 0.25 if rows == 1 else 0.1


def in_precision(model: GPT, precision: str, cast: bool, short: bool = False):
    """The model and the context to generate in: a copy with bf16 weights (cast=True: half the bytes each
    step reads, no per-step casts) or int8 weights (a quarter), bf16 autocast over fp32 weights (a model
    that is training), or fp32. The int8/int4 copy shares every weight it does not quantize with `model`
    (read, never written), so making it copies no float weights: a training run samples through one.
    `short`: for one short text, where packing weights for fbgemm's kernel costs more than it saves (quantize)."""
    if precision == "bf16" and cast:
        return copy.deepcopy(model).to(torch.bfloat16), contextlib.nullcontext()
    if precision in QUANTIZED:
        return quantize(sharing_copy(model), precision, fbgemm=not short), contextlib.nullcontext()
    return model, autocast(model.transformer.wte.weight.device, precision)


def sharing_copy(model: GPT) -> GPT:
    """A copy of `model`'s modules that holds `model`'s own parameters (not copies; buffers are copied) and
    none of its compiled blocks: what quantize() may replace layers of without touching `model`."""
    compiled = model.__dict__.pop("compiled_blocks", None)
    try:
        return copy.deepcopy(model, {id(p): p for p in model.parameters()})
    finally:
        if compiled is not None:
            model.__dict__["compiled_blocks"] = compiled


def _time_decode(model: GPT, device: torch.device, precision: str, cast: bool, steps: int = 16, rows: int = 1) -> float:
    """Median seconds of a one-token step for `rows` samples with a half-full cache, as generation runs it."""
    block, vocab = model.config.block_size, model.config.vocab_size
    times = []
    model, context = in_precision(model, precision, cast)
    with torch.inference_mode(), context:
        cache = KVCache(model.config.n_layer, block)
        prefill = max(1, block // 2)
        gen = torch.Generator(device).manual_seed(0)  # never the global stream: timing inside a run must not move it
        last_logits(model, torch.randint(0, vocab, (rows, prefill), device=device, generator=gen), vocab, cache)
        token = torch.zeros(rows, 1, dtype=torch.long, device=device)
        for i in range(min(steps + 2, block - prefill)):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            last_logits(model, token, vocab, cache)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    times = times[2:] or times  # the first steps warm up
    return sorted(times)[len(times) // 2]


def check_decode_precision(device: torch.device, requested: str, cast: bool = True) -> str:
    """`requested` if this device can generate in it (for auto: training's choice, fp32 or bf16, which
    decode_precision refines by measuring); DeviceError in one line if not, before any model is loaded."""
    if requested not in DECODE_PRECISIONS:
        raise DeviceError(f"Unknown precision '{requested}'; choose one of: {', '.join(DECODE_PRECISIONS)}.")
    if requested not in QUANTIZED:
        return choose_precision(device, requested)  # refuses bf16 where the device cannot run it
    if not cast:
        raise DeviceError(f"{requested} weights are for generation only, not for a model that is training; use bf16 or fp32.")
    if requested == "int8" and not int8_available(device):
        raise DeviceError(f"This PyTorch {torch.__version__} has no int8 weight kernel (_weight_int8pack_mm) "
                          f"for the {device.type}; use --precision fp32.")
    if requested == "int4" and not int4_available(device):
        raise DeviceError(f"int4 weights run on the CPU only (PyTorch's _weight_int4pack_mm_for_cpu), not on the "
                          f"{device.type}; use --precision int8 or fp32.")
    return requested


def decode_precision(model: GPT, device: torch.device, requested: str = "auto", cast: bool = True,
                     say: Callable[[str], None] = lambda line: None) -> str:
    """bf16, fp32 or int8 for generation, chosen by timing a one-token step of this model on this machine
    (cached): the fastest, where it beats fp32 by 10%. `cast`: the weights may be replaced (bf16 or int8
    copies); otherwise (a model that is training) bf16 means autocast and int8 is not a choice. Training's
    choice does not carry over: a one-token step reads every weight for little arithmetic, and bf16
    autocast, which speeds up a training step, measured 2x slower for it on an AMX CPU (it re-casts the
    weights each step), where int8 weights decoded SmolLM2-135M 1.9x faster than fp32 on an AVX2 EPYC
    that has no bf16 matmul (docs/benchmarks.md). An int8 candidate whose layers PyTorch's packed kernel
    cannot take (quantize.int8_refusal: it would crash, not lose) is never timed; `say` gets why.

    Raises DeviceError for a precision this device cannot run, or int8 for a model that is training."""
    choice = check_decode_precision(device, requested, cast)
    if requested != "auto":
        return choice
    int8 = cast and int8_available(device)
    refusal = packed_refusal(model) if int8 else None
    if refusal:
        say(f"--precision auto leaves int8 weights out: {refusal}.")
    candidates = ["fp32"] + (["bf16"] if bf16_supported(device) else []) + (["int8"] if int8 and not refusal else [])
    if len(candidates) == 1:
        return candidates[0]
    cfg = model.config
    key = (f"decode-precision-v5|{'cast' if cast else 'autocast'}|{device.type}|{cpu_model() if device.type == 'cpu' else torch.cuda.get_device_name()}"
           f"|{torch.get_num_threads()}|{torch.__version__}|{cfg.n_layer}x{cfg.n_embd}x{cfg.n_head}"
           f"x{cfg.vocab_size}x{cfg.block_size}")

    def measure() -> str:
        times = {p: _time_decode(model, device, p, cast) for p in candidates}
        fastest = min(times, key=times.get)
        return fastest if times[fastest] < 0.9 * times["fp32"] else "fp32"

    return cached(key, measure)


class Sampler:
    """The latest run's best checkpoint unless one is named, ready to generate."""
    def __init__(self, checkpoint: Path | None = None, device: str = "auto", precision: str = "auto",
                 compile: str = "auto", say=lambda line: None):
        if compile not in COMPILE_MODES:
            raise UserError(f"Unknown --compile '{compile}'; choose one of: {', '.join(COMPILE_MODES)}.")
        self.compile, self.say = compile, say
        self.checkpoint = resolve_checkpoint(checkpoint)
        self.device = resolve_device(device)
        check_decode_precision(self.device, precision)  # a precision this device cannot run: one line, before loading
        self.model, self.tokenizer, self.info = load_bladegpt(self.checkpoint)
        self.model.to(self.device).eval()
        self.precision = decode_precision(self.model, self.device, precision, say=say)
        if self.precision == "bf16":  # this model is ours alone: cast or quantize it in place, no copy
            self.model.to(torch.bfloat16)
        elif self.precision in QUANTIZED:
            quantize(self.model, self.precision, say)
        self.step_s: dict[int, float] = {}  # eager decode step time by batch rows, timed once (see _maybe_compile)
        self.decode = None  # the compiled one-token step, once compiled
        self.no_copy: NoCopy | None = None  # --no-copy's rule, once the training text is indexed

    def batch_size(self, n: int) -> int:
        """How many samples decode together: all of them, unless their KV cache would pass CACHE_BYTES."""
        cfg = self.model.config
        per_row = 2 * cfg.n_layer * cfg.block_size * cfg.n_embd * (2 if self.precision == "bf16" else 4)
        return max(1, min(n, MAX_BATCH, CACHE_BYTES // per_row))

    def samples(self, prompt: str, num_samples: int = 1, settings: SampleSettings = SampleSettings()
                ) -> Iterator[tuple[int, str]]:
        """(sample number, text piece) pairs: sample 0 piece by piece as it is generated, every other
        sample whole once its batch is done. Sample i is what settings.seed + i gives on its own, printed alike. A
        sample ends at any of the tokenizer's stop ids (the document separator, a model's own ends), which
        are never printed.

        The prompt is encoded now, so a prompt the tokenizer cannot take fails before any output.
        """
        ids = prompt_ids(self.tokenizer, prompt)
        if settings.no_copy is not None:
            self.copy_rule(settings.no_copy)
        step = self.batch_size(num_samples)
        self._maybe_compile(settings.max_new_tokens * -(-num_samples // step), step)
        return self._samples(ids, num_samples, step, settings)

    def copy_rule(self, chars: int) -> NoCopy:
        """--no-copy's rule over the run's training text (indexed once, as the copy meter's); UserError when
        that text is not known."""
        if self.no_copy is None or self.no_copy.chars != chars:
            index = self.no_copy.index if self.no_copy is not None else None
            if index is None:
                meter = copymeter.for_checkpoint(self.checkpoint)
                if meter is None:
                    raise UserError(f"--no-copy needs the training text, and {self.checkpoint} is not in a run "
                                    "folder; sample a run's checkpoint or leave --no-copy out.")
                if meter.wait(timeout=1.0) is None and meter.busy:
                    self.say("Indexing the training text for --no-copy, once for this dataset...")
                index = meter.wait()
                if index is None:
                    raise UserError(f"--no-copy needs the run's training text: {meter.error} Leave --no-copy out.")
            self.no_copy = NoCopy.for_tokenizer(index, chars, self.tokenizer)
        return self.no_copy

    def _maybe_compile(self, steps: int, rows: int) -> None:
        """Compile the decode step when asked, or (auto) when the steps ahead, timed eager here, would
        save more than compiling costs."""
        if self.compile == "off" or self.decode is not None:
            return
        if self.compile == "auto":
            if self.device.type == "cpu" and self.precision in QUANTIZED:
                return  # measured slower than eager: SmolLM2-135M int8 1.6x (1 sample), 3x (8), EPYC, 1 thread
            if rows not in self.step_s:  # the model as it is (its weights already in their precision)
                self.step_s[rows] = _time_decode(self.model, self.device, "fp32", cast=False, rows=rows)
            step_s = self.step_s[rows]
            cost = DECODE_COMPILE_COST_S_PER_LAYER.get(self.device.type, 10.0) * self.model.config.n_layer
            if steps * step_s * compile_gain(rows) <= cost:
                return
            self.say(f"Compiling the decode step: {steps:,} steps at ~{step_s * 1e3:.1f} ms would save more than "
                     f"the ~{cost:.0f} s it takes (--compile off skips it).")
        self.decode = compile_decode(self.model)

    def _samples(self, ids, num_samples, step, settings: SampleSettings):
        vocab, stops = self.tokenizer.vocab_size, self.tokenizer.stop_ids
        for first in range(0, num_samples, step):
            rows = range(first, min(first + step, num_samples))
            gens = [torch.Generator(self.device).manual_seed(settings.seed + i) for i in rows]
            guards = None if settings.no_copy is None else [self.copy_rule(settings.no_copy).guard() for _ in rows]
            steps = generate_batch(self.model, ids, settings.max_new_tokens, vocab, gens, **settings.knobs(),
                                   decode=self.decode, stop=stops, guards=guards)
            if first == 0:  # stream sample 0, keep the others' tokens
                yield 0, ""
                kept: list[torch.Tensor] = []

                def first_row() -> Iterator[int]:
                    for tokens in steps:
                        kept.append(tokens)
                        if int(tokens[0]) in stops:
                            return
                        yield int(tokens[0])

                for piece in stream_text(first_row(), self.tokenizer):
                    yield 0, piece
                kept.extend(steps)  # the other rows go on after sample 0 ended
                rest = torch.stack(kept, dim=1).tolist()[1:] if kept else []
            else:
                rest = torch.stack(list(steps), dim=1).tolist()
            for i, tokens in zip(rows[1:] if first == 0 else rows, rest):
                yield i, sample_text(until_stop(tokens, stops), self.tokenizer)

    def stream(self, prompt: str, settings: SampleSettings = SampleSettings()) -> Iterator[str]:
        """Text pieces of one sample as they are generated (the prompt itself is not repeated)."""
        return (piece for _, piece in self.samples(prompt, 1, settings))
