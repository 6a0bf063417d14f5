"""The measurement cache behind `auto`: a figure taken on a busy machine is taken again, never kept for good."""

import json

import pytest
import torch
from typer.testing import CliRunner

from bladegpt import runtime
from bladegpt.cli import app
from bladegpt.config import PRESETS, Preset


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder of this test's own, and a way to read what it holds."""
    monkeypatch.setenv("BLADEGPT_CACHE", str(tmp_path))
    return lambda: json.loads((tmp_path / "measurements.json").read_text())


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fake_matmul(monkeypatch, tflops_by_threads: dict[int, float]) -> list[int]:
    """_matmul_flops answering tflops_by_threads[threads] (fp32 and bf16 alike); the thread counts it ran at."""
    ran = []

    def matmul_flops(device, dtype, n, reps=5):
        ran.append(torch.get_num_threads())
        return tflops_by_threads[torch.get_num_threads()] * 1e12

    monkeypatch.setattr(runtime, "_matmul_flops", matmul_flops)
    return ran


def peaks_at(threads: int, tflops: float) -> tuple[str, dict]:
    return runtime._cpu_peaks_key(threads), {"fp32": tflops * 1e12}


def seed(cache_dir_entries: dict) -> None:
    runtime._store(cache_dir_entries)


def test_more_threads_slower_than_fewer_is_taken_again_once(cache, one_thread, monkeypatch):
    seed(dict([peaks_at(1, 1.39), peaks_at(2, 0.70)]))  # the 2-thread figure was taken while something else ran
    ran = fake_matmul(monkeypatch, {1: 1.2, 2: 2.5})
    assert runtime.cpu_peaks()["fp32"] == 1.39e12  # this thread count's own figure
    assert ran and set(ran) == {2}  # only the contradicted one, at its own thread count
    assert cache()[runtime._cpu_peaks_key(2)]["fp32"] == 2.5e12
    assert torch.get_num_threads() == 1  # the thread count is put back
    ran.clear()
    runtime.cpu_peaks()
    assert not ran  # consistent now: nothing to take again


def test_a_contradiction_that_stays_is_taken_again_only_once(cache, one_thread, monkeypatch):
    seed(dict([peaks_at(1, 1.39), peaks_at(2, 0.70)]))
    ran = fake_matmul(monkeypatch, {1: 1.39, 2: 0.5})  # this machine really is slower at 2 threads
    runtime.cpu_peaks()
    assert set(ran) == {2} and cache()[runtime._cpu_peaks_key(2)]["fp32"] == 0.70e12  # the better figure kept
    ran.clear()
    runtime.cpu_peaks()
    assert not ran


def test_consistent_peaks_are_not_taken_again(cache, one_thread, monkeypatch):
    seed(dict([peaks_at(1, 1.0), peaks_at(2, 1.7)]))  # within THREADS_TOLERANCE a thread: 0.85 of 1.0
    ran = fake_matmul(monkeypatch, {1: 5.0, 2: 5.0})
    assert runtime.cpu_peaks()["fp32"] == 1.0e12 and not ran


def test_more_threads_that_do_not_scale_are_taken_again(cache, one_thread, monkeypatch):
    """Faster than one thread but not by a thread's worth: this AMD EPYC's 2-thread bf16 peak was cached at
    0.28 TFLOP/s against 0.21 at 1 (taken while busy; 0.43 quiet), and bench read MFU 98% against it."""
    seed(dict([peaks_at(1, 0.21), peaks_at(2, 0.28)]))
    ran = fake_matmul(monkeypatch, {1: 0.21, 2: 0.43})
    runtime.cpu_peaks()
    assert set(ran) == {2} and cache()[runtime._cpu_peaks_key(2)]["fp32"] == 0.43e12


def test_threads_sharing_cores_are_taken_again_once(cache, one_thread, monkeypatch):
    seed(dict([peaks_at(1, 1.0), peaks_at(2, 1.1)]))  # two threads on one core (SMT): not a thread's worth more
    ran = fake_matmul(monkeypatch, {1: 1.0, 2: 1.05})
    runtime.cpu_peaks()
    assert set(ran) == {2} and cache()[runtime._cpu_peaks_key(2)]["fp32"] == 1.1e12  # the better figure kept
    ran.clear()
    runtime.cpu_peaks()
    assert not ran  # the machine's own: trusted from now on


TINY = Preset("tiny for tests", dict(n_layer=2, n_head=2, n_embd=32, block_size=16), dict(batch_size=2))


def test_bench_remeasure_retakes_every_cached_measurement(cache, one_thread, monkeypatch):
    monkeypatch.setitem(PRESETS, "nano", TINY)
    here = runtime.device_name(torch.device("cpu"))
    attention = f"{runtime.ATTENTION_KEY}|{here}|fp32|(2, 2, 16, 16)|{torch.__version__}"
    decode = f"decode-precision-v3|cast|cpu|{runtime.cpu_model()}|1|{torch.__version__}|2x32x2x64x16"
    elsewhere = f"cpu-peaks-v2|Another CPU|1|{torch.__version__}"
    seed(dict([peaks_at(1, 0.2), peaks_at(2, 0.3), (attention, "manual"), (decode, "int8"), (elsewhere, {"fp32": 7.0})]))
    ran = fake_matmul(monkeypatch, {1: 1.5, 2: 2.5})
    monkeypatch.setattr(runtime, "_time_attention", lambda device, precision, impl, shape: {"manual": 2.0, "sdpa": 1.0, "chunked": 1.5}[impl])
    result = CliRunner().invoke(app, ["bench", "--remeasure", "--preset", "nano", "--rungs", "vanilla", "--steps", "1", "--json"])
    assert result.exit_code == 0, result.output
    held = cache()
    assert held[runtime._cpu_peaks_key(1)]["fp32"] == 1.5e12 and held[runtime._cpu_peaks_key(2)]["fp32"] == 2.5e12
    assert {1, 2} <= set(ran)
    assert held[attention] == "sdpa"  # measured again
    assert decode not in held  # measured on a model: measured again when next needed
    assert held[elsewhere] == {"fp32": 7.0}  # another machine's: left as it was
    assert json.loads(result.stdout)["peak_flops"] == 1.5e12  # the bench ran on the fresh figure
    assert "Re-measured the CPU's matmul peaks at 1, 2 thread(s)" in result.stderr
