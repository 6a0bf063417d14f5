"""--no-copy N: decoding never writes N characters in a row found in the training text (generate/nocopy.py)."""

import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bladegpt.cli import app
from bladegpt.config import ModelConfig
from bladegpt.data import copymeter
from bladegpt.data.prepare import prepare
from bladegpt.data.copyindex import CopyIndex
from bladegpt.errors import UserError
from bladegpt.generate.engine import generate_batch, sample_guarded, sample_next_token
from bladegpt.generate.nocopy import NoCopy
from bladegpt.generate.settings import SampleSettings
from bladegpt.model import GPT
from bladegpt.train import train

TEXT = (open("corpora/officer_k.txt", encoding="utf-8").read()[:6000]).encode()
BYTES = [bytes([i]) for i in range(256)] + [b""]  # a byte-level vocabulary and a stop id (256) with no text
STOP = 256


def recite(rule: NoCopy | None, seed: int, steps: int = 600, temperature: float = 0.8, top_k: int | None = 20) -> str:
    """What a model that recites the text gives: each step the text's next byte is far likelier than the rest."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.Generator().manual_seed(1000 + seed)
    guards = None if rule is None else [rule.guard()]
    out = []
    for t in range(steps):
        logits = torch.randn(1, len(BYTES), generator=noise)
        logits[0, TEXT[t % len(TEXT)]] += 12.0
        logits[0, STOP] = -20.0
        knobs = dict(temperature=temperature, top_k=top_k)
        token = sample_next_token(logits, [gen], **knobs) if guards is None \
            else sample_guarded(logits, [gen], knobs, None, guards)
        if int(token[0]) != STOP:
            out.append(int(token[0]))
    return bytes(out).decode("utf-8", "replace")


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_reciting_model_copies_and_with_no_copy_50_never_does(temperature):
    index = CopyIndex.from_bytes(TEXT)
    rule = NoCopy(index, 50, BYTES, (STOP,))
    free = [recite(None, s, temperature=temperature) for s in range(3)]
    kept = [recite(rule, s, temperature=temperature) for s in range(3)]
    assert index.measure(free).share > 0.8
    assert index.measure(kept).copied == 0 and all(len(k) > 500 for k in kept)
    assert rule.forced == 0


def test_a_batch_equals_each_seed_alone_and_copies_nothing_of_its_own_text():
    """The training text is what the model writes unconstrained, so --no-copy must leave it; each row redraws
    with its own generator, so row i is seed i's text alone."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=64, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
    pieces = [bytes([48 + i]) for i in range(64)]  # printable ASCII, one character an id
    knobs = dict(temperature=0.7, top_k=8)

    def run(seeds, rule=None):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        guards = None if rule is None else [rule.guard() for _ in seeds]
        rows = torch.stack(list(generate_batch(model, [1, 2], 200, 64, gens, **knobs, guards=guards)), 1)
        return [b"".join(pieces[i] for i in row).decode() for row in rows.tolist()]

    free = run(range(4))
    index = CopyIndex.from_bytes("\n".join(free).encode())
    assert index.measure(free).share == 1
    rule = NoCopy(index, 50, pieces)
    batch = run(range(4), rule)
    assert batch == [run([s], rule)[0] for s in range(4)]
    assert index.measure(batch).copied == 0
    assert [b[:49] for b in batch] == [f[:49] for f in free]  # nothing changes before a copy could reach 50


def test_when_the_kept_tokens_all_copy_the_likeliest_that_does_not_is_taken():
    """top-k 1 keeps one token; when it copies, the vocabulary is searched likeliest first."""
    index = CopyIndex.from_bytes(b"a" * 60 + b"\n" + b"a" * 49 + b"b")
    rule = NoCopy(index, 50, [b"a", b"b", b"c"])
    guard = rule.guard()
    guard.text = b"a" * 49
    logits = torch.tensor([[5.0, 4.0, 3.0]])
    for temperature in (0.0, 1.0):
        token = sample_guarded(logits, [torch.Generator().manual_seed(0)], dict(temperature=temperature, top_k=1),
                               None, [guard])
        assert int(token[0]) == 2 and rule.forced == 0
        guard.text = b"a" * 49


def test_when_every_token_copies_a_stop_ends_the_sample_or_the_likeliest_is_counted():
    index = CopyIndex.from_bytes(b"a" * 60 + b"\n" + b"a" * 49 + b"b")
    logits = torch.tensor([[5.0, 4.0, 3.0]])
    with_stop = NoCopy(index, 50, [b"a", b"b", b""], stop_ids=(2,))
    guard = with_stop.guard()
    guard.text = b"a" * 49
    assert int(sample_guarded(logits, [None], dict(temperature=0.0), None, [guard])[0]) == 2
    assert with_stop.forced == 0
    no_stop = NoCopy(index, 50, [b"a", b"b"])
    guard = no_stop.guard()
    guard.text = b"a" * 49
    assert int(sample_guarded(logits[:, :2], [None], dict(temperature=0.0), None, [guard])[0]) == 0
    assert no_stop.forced == 1


def test_banned_ids_leave_the_kept_set_and_a_row_with_nothing_left_gives_minus_one():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [3.0, 2.0, 1.0, 0.0]])
    banned = torch.tensor([[True, False, False, False], [True, True, False, False]])
    assert sample_next_token(logits, None, temperature=0, banned=banned).tolist() == [1, 2]
    draws = sample_next_token(logits, None, temperature=1.0, top_k=2, banned=banned)
    assert draws.tolist() == [1, -1]
    assert sample_next_token(logits, None, temperature=0, banned=torch.ones_like(banned)).tolist() == [-1, -1]


def test_no_copy_shorter_than_the_index_finds_is_refused_in_one_line():
    with pytest.raises(UserError, match="--no-copy must be at least 47"):
        SampleSettings(no_copy=20)
    assert SampleSettings(no_copy=47).no_copy == 47


def sampled(run: Path, seed: int, num_samples: int, *extra: str) -> list[str]:
    """What `bladegpt sample` writes after its prompt, one text per sample."""
    result = CliRunner().invoke(app, ["sample", "It rains", "--checkpoint", str(run), "--seed", str(seed),
                                      "--max-new-tokens", "300", "--num-samples", str(num_samples), "--temperature",
                                      "0.5", "--precision", "fp32", "--compile", "off", "--device", "cpu", *extra])
    assert result.exit_code == 0, result.output
    return [t[len("It rains"):] for t in result.stdout[:-1].split("\n" + "-" * 40 + "\n")]


@pytest.mark.slow
def test_a_model_trained_to_recite_its_text_copies_it_and_with_no_copy_50_does_not(tmp_path, monkeypatch):
    """1,500 steps over 1.5 KB of officer_k: the model recites it; `sample --no-copy 50` writes no 50-character
    span of it, and sample i of a batch is seed + i alone."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "k.txt").write_text(TEXT.decode()[:1500])
    prepare([tmp_path / "k.txt"], tokenizer="char")
    train(None, "nano", dict(n_layer=2, n_head=2, n_embd=96, block_size=64),
          dict(batch_size=8, steps=1500, warmup_steps=20, eval_interval=1500, eval_iters=1, log_interval=500,
               sample_tokens=0, lr=3e-3), compile="off")
    run = next((tmp_path / "runs").iterdir())
    index = copymeter.for_checkpoint(run / "best.safetensors").wait()
    free = sampled(run, 1, 3)
    kept = sampled(run, 1, 3, "--no-copy", "50")
    assert index.measure(free).share > 0.5
    assert index.measure(kept).copied == 0 and all(len(k) > 200 for k in kept)
    assert kept[1:] == [sampled(run, 1 + i, 1, "--no-copy", "50")[0] for i in (1, 2)]
    loose = tmp_path / "loose.safetensors"  # a checkpoint outside its run: its training text is not known
    shutil.copy(run / "best.safetensors", loose)
    result = CliRunner().invoke(app, ["sample", "--checkpoint", str(loose), "--no-copy", "50", "--device", "cpu"])
    assert result.exit_code != 0 and "not in a run folder" in result.output and "Traceback" not in result.output

