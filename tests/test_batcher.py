"""The serve decode loop: texts that join and leave one batch, at any step, each give the tokens the engine's
generator gives for its seed alone (the path `bladegpt sample` takes), window slides included."""

import time

import pytest
import torch

from bladegpt.config import ModelConfig
from bladegpt.generate.engine import generate
from bladegpt.generate.settings import SampleSettings
from bladegpt.model import GPT
from bladegpt.serve.batcher import Batcher, Job, QueueFull

BLOCK = 16
SHAPES = {"gpt2": {}, "rope-gqa": dict(positions="rope", norm="rmsnorm", n_kv_head=1)}


def tiny(shape: str, attention: str, block: int = BLOCK) -> GPT:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, block_size=block, n_layer=2, n_head=2, n_embd=32, **SHAPES[shape])).eval()
    model.set_attention(attention)
    return model


def job(prompt: list[int], settings: SampleSettings, out: dict) -> Job:
    out[settings.seed] = []
    return Job(prompt, settings, lambda token, finish: out[settings.seed].append(token if finish is None else finish))


@pytest.mark.parametrize("attention", ["sdpa", "manual"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_texts_joining_and_leaving_a_batch_each_equal_their_seed_alone(shape, attention):
    model = tiny(shape, attention)
    batcher = Batcher(model, 64, stop_ids=(), max_rows=8, max_waiting=8)
    asks = {  # step it joins at: (prompt, settings); lengths cross the window slide at different steps
        0: ([1, 2, 3], SampleSettings(max_new_tokens=40, seed=1)),
        1: (list(range(5, 20)), SampleSettings(max_new_tokens=9, seed=2, top_k=5)),
        3: (list(range(16)), SampleSettings(max_new_tokens=30, seed=3, temperature=1.3, top_p=0.9)),
        4: ([7], SampleSettings(max_new_tokens=25, seed=4, repetition_penalty=1.3, min_p=0.05)),
        6: ([9, 9, 9, 9, 9], SampleSettings(max_new_tokens=12, seed=5, temperature=0)),
    }
    out: dict[int, list] = {}
    run_steps(batcher, asks, out, 60)
    for prompt, settings in asks.values():
        alone = list(generate(model, prompt, settings.max_new_tokens, 64, torch.Generator().manual_seed(settings.seed),
                              **settings.knobs()))
        assert out[settings.seed] == [*alone, "length"], settings


def run_steps(batcher: Batcher, asks: dict, out: dict, steps: int) -> None:
    with torch.inference_mode():
        for step in range(steps):
            if step in asks:
                batcher.submit([job(*asks[step], out)])
            if not batcher.waiting.empty():
                batcher._admit()
            if batcher.jobs:
                batcher._step()


def test_the_cache_grows_in_rows_and_length_keeping_every_text():
    model = tiny("rope-gqa", "sdpa", block=128)
    batcher = Batcher(model, 64, stop_ids=(), max_rows=8, max_waiting=8)
    lengths = [3, 70, 10, 60, 5, 1]  # past the first 64 positions and the first 4 rows, at different steps
    asks = {step: ([(7 * i) % 64 for i in range(n)], SampleSettings(max_new_tokens=30, seed=step))
            for step, n in enumerate(lengths)}
    out: dict[int, list] = {}
    run_steps(batcher, asks, out, 40)
    assert batcher.rows.k[0].size(0) == 8 and batcher.rows.k[0].size(2) == 128
    for prompt, settings in asks.values():
        alone = list(generate(model, prompt, 30, 64, torch.Generator().manual_seed(settings.seed), **settings.knobs()))
        assert out[settings.seed] == [*alone, "length"], settings


def test_a_cancelled_text_leaves_and_a_full_queue_is_refused():
    model = tiny("gpt2", "sdpa")
    batcher = Batcher(model, 64, stop_ids=(), max_rows=2, max_waiting=1)
    out: dict[int, list] = {}
    first, second = job([1, 2], SampleSettings(seed=1), out), job([3], SampleSettings(seed=2), out)
    batcher.submit([first])
    with pytest.raises(QueueFull):
        batcher.submit([second, job([4], SampleSettings(seed=3), out)])
    with torch.inference_mode():
        batcher._admit()
        batcher._step()
        first.cancel()
        batcher._step()
    assert batcher.jobs == [] and len(out[1]) == 1  # one token, then it left without a word


def test_the_decode_thread_ends_texts_at_a_stop_id():
    model = tiny("gpt2", "sdpa")
    settings = SampleSettings(max_new_tokens=30, seed=1, temperature=0)
    greedy = list(generate(model, [1, 2, 3], 30, 64, None, temperature=0))
    stop = greedy[4]
    batcher = Batcher(model, 64, stop_ids=(stop,), max_rows=4, max_waiting=4)
    out: dict[int, list] = {}
    batcher.start()
    try:
        batcher.submit([job([1, 2, 3], settings, out)])
        for _ in range(600):
            if out[1] and out[1][-1] in ("stop", "length"):
                break
            time.sleep(0.05)
    finally:
        batcher.stop()
    assert out[1] == [*greedy[: greedy.index(stop)], "stop"]


def test_a_failing_step_ends_its_texts_and_the_thread_serves_on(monkeypatch):
    model = tiny("gpt2", "sdpa")
    batcher = Batcher(model, 64, stop_ids=(), max_rows=4, max_waiting=4)
    out: dict[int, list] = {}
    broken = {"on": True}
    real = Batcher._step

    def step(self):
        if broken["on"]:
            broken["on"] = False
            raise RuntimeError("out of memory")
        real(self)

    monkeypatch.setattr(Batcher, "_step", step)
    batcher.start()
    try:
        batcher.submit([job([1, 2], SampleSettings(max_new_tokens=5, seed=1), out)])
        for _ in range(200):
            if out[1]:
                break
            time.sleep(0.05)
        batcher.submit([job([1, 2], SampleSettings(max_new_tokens=5, seed=2), out)])
        for _ in range(200):
            if out[2] and out[2][-1] == "length":
                break
            time.sleep(0.05)
    finally:
        batcher.stop()
    assert out[1] == ["error"] and len(out[2]) == 6 and out[2][-1] == "length"


def test_no_copy_texts_in_a_batch_equal_their_seed_alone_through_the_engine():
    """A job's guard refuses and redraws as sample's rows do: on a training text made of the model's own
    unconstrained texts, each job gives what generate_batch gives its seed with a guard."""
    from bladegpt.data.copyindex import CopyIndex
    from bladegpt.generate.engine import generate_batch
    from bladegpt.generate.nocopy import NoCopy

    model = tiny("gpt2", "sdpa", block=64)
    pieces = [bytes([48 + i]) for i in range(64)]
    settings = [SampleSettings(max_new_tokens=150, seed=s, temperature=0.7, top_k=8, no_copy=50) for s in range(3)]

    def alone(s: SampleSettings, rule=None) -> list[int]:
        steps = generate_batch(model, [1, 2], s.max_new_tokens, 64, [torch.Generator().manual_seed(s.seed)],
                               **s.knobs(), guards=None if rule is None else [rule.guard()])
        return [int(t[0]) for t in steps]

    free = [alone(s) for s in settings]
    rule = NoCopy(CopyIndex.from_bytes(b"\n".join(b"".join(pieces[i] for i in f) for f in free)), 50, pieces)
    batcher = Batcher(model, 64, stop_ids=(), max_rows=4, max_waiting=4)
    out: dict[int, list] = {}
    with torch.inference_mode():
        batcher.submit([Job([1, 2], s, lambda token, finish, k=s.seed: out.setdefault(k, []).append(token),
                            rule.guard()) for s in settings])
        while not batcher.waiting.empty() or batcher.jobs:
            batcher._admit()
            if batcher.jobs:
                batcher._step()
    for s, f in zip(settings, free):
        kept = alone(s, rule)
        assert out[s.seed][:-1] == kept and kept != f
