"""Device, precision, attention and compile choices, made by measuring this machine; peak FLOP/s.

"auto" never guesses from a rule of thumb where a measurement is cheap: the CPU's bf16 and fp32
matmul peaks and the manual-vs-SDPA attention speed are measured once and cached. A cached peak that
contradicts another (more threads not scaling from fewer) is taken again, and `remeasure` retakes them all.
"""

from __future__ import annotations

import ast
import contextlib
import itertools
import json
import os
import platform
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bladegpt import strictjson
from bladegpt.errors import DeviceError
from bladegpt.files import cache_dir
from bladegpt.attention import ATTENTION_IMPLS, attend

PRECISIONS = ("auto", "bf16", "fp32")
ATTENTIONS = ("auto", *ATTENTION_IMPLS)
COMPILE_MODES = ("auto", "on", "off")
ATTENTION_KEY = "attention-v2"  # v2: chunked among the choices (a v1 choice was between manual and sdpa only)
DROPOUT_TAG = "dropout"  # the end of an attention key for a model that drops (chunked not a choice)

# Dense bf16 tensor-core peaks (FLOP/s) of known cards, from their data sheets.
GPU_BF16_PEAKS = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10G": 70e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,  # fp16; no bf16 on Volta
    "T4": 65e12,  # fp16
}


def _measurements() -> dict:
    try:
        return json.loads((cache_dir() / "measurements.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def _remember(key: str, value) -> None:
    """Store one measurement in the cache folder (atomically; a read-only cache only forgets it)."""
    _store({**_measurements(), key: value})


def _store(cache: dict) -> None:
    """Write the whole measurement cache (atomically; a read-only cache folder only forgets it)."""
    path = cache_dir() / "measurements.json"
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(strictjson.dumps(cache, indent=1), encoding="utf-8")
        os.replace(tmp, path)


def cached(key: str, compute):
    """Return compute() once per machine and key, remembered in the cache folder."""
    cache = _measurements()
    if key not in cache:
        cache[key] = compute()
        _remember(key, cache[key])
    return cache[key]


def resolve_device(name: str = "auto") -> torch.device:
    """cuda > mps > cpu for "auto"; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"Unknown --device '{name}'; use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"BladeGPT does not run on --device {name}; use auto, cpu, cuda, cuda:N or mps.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for but no CUDA GPU is visible; use --device auto.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), "
                          f"numbered from cuda:0; pick one of them.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("--device mps was asked for but MPS is not available; use --device auto.")
    return device


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"{cpu_model()}, {torch.get_num_threads()} threads"
    return device.type


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "CPU"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _matmul_flops(device: torch.device, dtype: torch.dtype, n: int, reps: int = 5) -> float:
    gen = torch.Generator(device).manual_seed(0)  # never the global stream: a run's dropout must not depend on a cache
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    a @ b
    best = float("inf")
    for _ in range(reps):
        synchronize(device)
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def cpu_bf16_supported() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# A 2,048-wide matmul is compute-bound: on cores of its own, each thread adds about one thread's FLOP/s
# (this 2-core AMD EPYC: bf16 0.21 TFLOP/s at 1 thread, 0.43 at 2). A figure per thread below this share of
# the fewer threads' was taken while something else ran (a helper's cache: 0.70 TFLOP/s bf16 at 2 threads
# against 1.39 at 1; this machine's: 0.28 at 2 against 0.21 at 1, MFU then read 98%), or the threads share
# cores (SMT) or a clock (turbo): measured again once, and a figure that stays is the machine's own.
THREADS_TOLERANCE = 0.8


def _cpu_peaks_key(threads: int | None = None) -> str:
    return f"cpu-peaks-v2|{cpu_model()}|{threads or torch.get_num_threads()}|{torch.__version__}"


def _at_threads(threads: int, compute):
    """compute() with PyTorch on `threads` threads, then the thread count as it was."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return compute()
    finally:
        torch.set_num_threads(before)


def _measure_cpu_peaks() -> dict[str, float]:
    cpu = torch.device("cpu")
    peaks = {"fp32": _matmul_flops(cpu, torch.float32, 2048, reps=8)}
    if cpu_bf16_supported():
        peaks["bf16"] = _matmul_flops(cpu, torch.bfloat16, 2048, reps=8)
    return peaks


def _cached_by_threads(cache: dict, prefix: str, suffix: str) -> dict[int, str]:
    """Thread count -> key, for the cache's keys `prefix` + a thread count + `suffix`."""
    found = {}
    for key in cache:
        middle = key[len(prefix):len(key) - len(suffix)] if key.startswith(prefix) and key.endswith(suffix) else ""
        if middle.isdigit():
            found[int(middle)] = key
    return found


def cpu_peaks() -> dict[str, float]:
    """Measured matmul FLOP/s of this CPU in fp32 and (where supported) bf16 at this thread count; cached.
    A peak cached for more threads that does not scale from one for fewer (per thread, below THREADS_TOLERANCE
    of the fewer threads' figure per thread) is taken again, once, keeping the better figure: a busy machine
    only ever lowers one."""
    key = _cpu_peaks_key()
    peaks = cached(key, _measure_cpu_peaks)
    cache = _measurements()
    keys = _cached_by_threads(cache, f"cpu-peaks-v2|{cpu_model()}|", f"|{torch.__version__}")
    marker = f"cpu-peaks-retaken|{cpu_model()}|{torch.__version__}"  # a contradiction that stays is the machine's own
    suspects = {many for few, many in itertools.combinations(sorted(keys), 2)
                if any(cache[keys[many]].get(dtype, value * many / few) < THREADS_TOLERANCE * value * many / few
                       for dtype, value in cache[keys[few]].items())} - set(cache.get(marker, []))
    for threads in sorted(suspects):
        fresh, old = _at_threads(threads, _measure_cpu_peaks), cache[keys[threads]]
        cache[keys[threads]] = {dtype: max(value, old.get(dtype, 0.0)) for dtype, value in fresh.items()}
        cache[marker] = sorted({*cache.get(marker, []), threads})
    if suspects:
        _store(cache)
    return cache.get(key, peaks)


def raise_cpu_peak(observed: float) -> float:
    """The CPU's peak again, after a run computed faster than the cached one (measured once, maybe while the
    machine was busy: MFU read 107% for a helper): measured anew, at least `observed` FLOP/s; cached."""
    peaks = cpu_peaks()
    fresh = _matmul_flops(torch.device("cpu"), torch.float32, 2048, reps=8)
    name = max(peaks, key=peaks.get)
    raised = {**peaks, name: max(peaks[name], fresh, observed)}
    _remember(_cpu_peaks_key(), raised)
    return raised[name]


def remeasure(say=lambda line: None) -> None:
    """Take every measurement cached for this machine again, fresh (`bench --remeasure`): the CPU's peaks
    at each thread count cached (and at this one), a GPU's peak, the attention choices; the rest of this
    machine's entries (decode precision, measured on a model; other PyTorch versions') are forgotten, to
    be measured again when next needed. Other machines' entries are kept. `say` gets one line per kind."""
    cache, fresh = _measurements(), {}
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    peaks = _cached_by_threads(cache, f"cpu-peaks-v2|{cpu_model()}|", f"|{torch.__version__}")
    threads = sorted({*peaks, torch.get_num_threads()})
    for t in threads:
        fresh[_cpu_peaks_key(t)] = _at_threads(t, _measure_cpu_peaks)
    say(f"Re-measured the CPU's matmul peaks at {', '.join(map(str, threads))} thread(s): "
        f"{'; '.join(_tflops(v) for v in fresh.values())}.")
    for i, name in enumerate(gpus):
        if f"gpu-peak|{name}" in cache:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            fresh[f"gpu-peak|{name}"] = _matmul_flops(torch.device("cuda", i), dtype, 8192)
    attention = {key: choice for key in cache if (choice := _retake_attention(key)) is not None}
    fresh.update(attention)
    forgotten = [key for key in cache if key not in fresh and any(name in key for name in [cpu_model(), *gpus])]
    _store({**{k: v for k, v in cache.items() if k not in forgotten}, **fresh})
    say(f"Re-measured {len(attention)} attention choice(s); forgot {len(forgotten)} other entr(ies) of this "
        f"machine (decode precision, other PyTorch versions), measured again when next needed.")


def _tflops(peaks: dict[str, float]) -> str:
    return ", ".join(f"{dtype} {value / 1e12:.2f}" for dtype, value in peaks.items()) + " TFLOP/s"


def _retake_attention(key: str) -> str | None:
    """The attention choice of a cached `choose_attention` key of this machine and PyTorch, measured
    again (on the CPU at the key's thread count); None for another key."""
    parts = key.split("|")
    if len(parts) not in (5, 6) or parts[0] != ATTENTION_KEY or parts[4] != torch.__version__ or parts[5:] not in (
            [], [DROPOUT_TAG]):
        return None
    where, precision, shape = parts[1], parts[2], ast.literal_eval(parts[3])
    prefix = f"{cpu_model()}, "
    if where.startswith(prefix) and where.endswith(" threads") and where[len(prefix):-len(" threads")].isdigit():
        threads, device = int(where[len(prefix):-len(" threads")]), torch.device("cpu")
    elif torch.cuda.is_available() and where == torch.cuda.get_device_name():
        threads, device = torch.get_num_threads(), torch.device("cuda")
    else:
        return None
    seconds = lambda impl: _time_attention(device, precision, impl, shape)
    return _at_threads(threads, lambda: min(_attention_candidates(len(parts) == 6), key=seconds))


def peak_flops(device: torch.device) -> float:
    """The device's best dense matmul FLOP/s, the denominator of MFU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for card, peak in GPU_BF16_PEAKS.items():
            if card in name:
                return peak
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return cached(f"gpu-peak|{name}", lambda: _matmul_flops(device, dtype, 8192))
    if device.type == "cpu":
        return max(cpu_peaks().values())
    return float("nan")  # no honest peak known for this device


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_bf16_supported()


def choose_precision(device: torch.device, requested: str = "auto") -> str:
    """bf16 autocast where the device trains bf16 faster than fp32; otherwise fp32."""
    if requested not in PRECISIONS:
        raise DeviceError(f"Unknown precision '{requested}'; choose one of: {', '.join(PRECISIONS)}.")
    supported = bf16_supported(device)
    if requested == "bf16" and not supported:
        raise DeviceError(f"bf16 is not supported on this {device.type}; use --precision fp32.")
    if requested != "auto":
        return requested
    if not supported:
        return "fp32"
    if device.type == "cpu":  # bf16 pays only with AMX-class matmul units: measure it
        peaks = cpu_peaks()
        return "bf16" if peaks.get("bf16", 0.0) > 1.3 * peaks["fp32"] else "fp32"
    return "bf16"


def autocast(device: torch.device, precision: str):
    """The context forward passes run in: bf16 autocast, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_matmul_precision(device: torch.device, allow_tf32: bool) -> None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = allow_tf32


def _time_attention(device, precision, impl, shape, reps=5) -> float:
    B, nh, T, hs = shape
    gen = torch.Generator(device).manual_seed(0)  # never the global stream (see _matmul_flops)
    q, k, v = (torch.randn(B, nh, T, hs, device=device, generator=gen).requires_grad_() for _ in range(3))
    times = []
    for i in range(reps + 2):
        synchronize(device)
        t0 = time.perf_counter()
        with autocast(device, precision):
            y = attend(q, k, v, impl, 0.0)
        y.float().sum().backward()
        synchronize(device)
        if i >= 2:  # the first calls pay for allocation and kernel selection
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _attention_candidates(dropout: bool) -> tuple[str, ...]:
    """What attention a run may train with: chunked has no dropout (attend() sends a step that drops to sdpa)."""
    return tuple(impl for impl in ATTENTION_IMPLS if not (dropout and impl == "chunked"))


def choose_attention(device: torch.device, precision: str, shape: tuple[int, int, int, int], requested: str = "auto",
                     dropout: float = 0.0) -> str:
    """Manual, SDPA or chunked attention (attention.py), whichever trains faster at this (B, nh, T, hs) here,
    forward and backward; cached. A model with `dropout` > 0 trains without chunked, which cannot drop
    (auto leaves it out; asked for, it is refused: DeviceError, one line)."""
    if requested not in ATTENTIONS:
        raise DeviceError(f"Unknown attention '{requested}'; choose one of: {', '.join(ATTENTIONS)}.")
    if requested == "chunked" and dropout > 0:
        raise DeviceError(f"--attention chunked computes attention without dropout, and this model has --dropout "
                          f"{dropout}; use --attention sdpa or manual, or --dropout 0.")
    if requested != "auto":
        return requested
    key = f"{ATTENTION_KEY}|{device_name(device)}|{precision}|{shape}|{torch.__version__}"
    key += f"|{DROPOUT_TAG}" if dropout > 0 else ""  # a choice without chunked among the candidates
    candidates = _attention_candidates(dropout > 0)
    return cached(key, lambda: min(candidates, key=lambda impl: _time_attention(device, precision, impl, shape)))


def compile_available(device: torch.device) -> tuple[bool, str]:
    """Whether torch.compile can build kernels here, and why not when it cannot."""
    if device.type == "cuda":
        try:
            import triton  # noqa: F401
        except ImportError:
            return False, "Triton is not installed (on Windows it is not available)"
        return True, ""
    if device.type == "cpu":
        if platform.system() == "Windows":
            return False, "torch.compile's CPU backend needs a C++ compiler setup not found on Windows"
        if not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
            return False, "no C++ compiler found (install g++ or clang++)"
        return True, ""
    return False, f"torch.compile is not supported on {device.type} here"


@dataclass
class Runtime:
    """Everything about *how* to run that does not change the model's math."""
    device: torch.device
    precision: str  # "bf16" or "fp32"
    attention: str  # "manual" or "sdpa"
    compile: bool

    def autocast(self):
        return autocast(self.device, self.precision)

    def describe(self) -> str:
        return (
            f"{device_name(self.device)} · {self.precision} · {self.attention} attention · "
            f"{'compiled' if self.compile else 'eager'}"
        )
