"""The voice report (generate/voice.py): loops and style distance, measured on texts written here and on the
project's corpora, and shown where a user reads a run."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from bladegpt.cli.display import TrainDisplay
from bladegpt.cli.tables import runs_table
from bladegpt.data.dataset import TokenData
from bladegpt.data.prepare import prepare
from bladegpt.generate.voice import StyleReference, describe, loops, report, words
from bladegpt.train import train
from bladegpt.train.evaluate import Evaluator
from tests.conftest import TINY_MODEL, TINY_TRAIN
from tests.safety import invoke

ROOT = Path(__file__).resolve().parents[1]
WITCHER = (ROOT / "corpora" / "witcher.txt").read_text(encoding="utf-8")
OFFICER_K = (ROOT / "corpora" / "officer_k.txt").read_text(encoding="utf-8")
OWN_TEXT = (2 / np.pi) ** 0.5  # the mean |z| of a normal variable
FRESH = ("The rain kept on through the night. I walked to the station, counted the lamps on the bridge, and "
         "wondered whether the ferry would run at dawn. Nobody answered the door of the old archive.")


def test_words_are_lowercased_runs_of_letters_with_inner_apostrophes():
    assert words("I'm not—sure. Don’t 42 cats' K-9") == ["i'm", "not", "sure", "don't", "cats", "k"]


def test_a_looping_text_scores_high_and_a_fresh_one_zero():
    assert loops(["to make us, to make us, to make us"]) == pytest.approx(3 / 6)
    assert loops(["I still have that contract. " * 12]) > 0.8
    assert loops([FRESH]) == 0.0
    # each sample's 4-grams are its own: two samples that share a phrase do not loop
    assert loops(["the night I came home late", "the night I came home late"]) == 0.0
    # fewer than 4 words: no 4-gram, no figure; beside a longer sample, only its 4-grams count
    assert loops(["three short words"]) is None and loops([]) is None
    assert loops(["three short words", "a b c d e f a b c d"]) == pytest.approx(1 / 7)


def pieces(text: str, length: int, count: int) -> list[str]:
    """`count` evenly spaced pieces of `length` words of a text."""
    w = words(text)
    return [" ".join(w[s : s + length]) for s in np.linspace(0, len(w) - length, count).astype(int)]


def test_the_held_out_texts_own_windows_score_near_the_mean_absolute_normal():
    """The spread is that of windows as long as the samples: a piece of the text itself scores ~sqrt(2/pi)."""
    held_out = WITCHER[int(len(WITCHER) * 0.9):]
    reference = StyleReference.from_text(held_out)
    for length in (40, 120):
        own = [reference.distance([p]) for p in pieces(held_out, length, 40)]
        assert abs(np.mean(own) - OWN_TEXT) < 0.2, (length, np.mean(own))


def test_another_authors_text_is_further_from_the_held_out_text_than_its_own():
    """witcher's last tenth held out: its first nine tenths read closer than officer_k's text or Shakespeare's,
    and more clearly the more words are scored (short samples are noisy: Eder 2015)."""
    cut = int(len(WITCHER) * 0.9)
    reference = StyleReference.from_text(WITCHER[cut:])
    shakespeare = (ROOT.parent / "shared" / "data" / "tinyshakespeare.txt")
    others = [OFFICER_K] + ([shakespeare.read_text(encoding="utf-8")[:200_000]] if shakespeare.is_file() else [])
    for length in (200, 800):
        own = np.median([reference.distance([p]) for p in pieces(WITCHER[:cut], length, 24)])
        for other in others:
            assert own < np.median([reference.distance([p]) for p in pieces(other, length, 24)]) - 0.1, length
    # the samples' words are pooled: 4 samples of 200 words read as one of 800
    samples = pieces(OFFICER_K, 200, 4)
    assert reference.distance(samples) == pytest.approx(reference.distance([" ".join(samples)]))


def test_too_few_words_give_no_distance():
    reference = StyleReference.from_text(WITCHER[:20_000])
    assert reference.distance(["only a handful of words here"]) is None and reference.distance([]) is None
    assert StyleReference.from_text("a held-out text of a few words") is None
    assert report(["to make us, to make us, to make us"], None) == {"loops": 0.5, "style": None}
    assert describe(0.5, None) == "loops 50%" and describe(None, None) == "loops -"
    assert describe(0.04, 0.913, 1.32) == "loops 4% · style distance 0.91 (base 1.32)"


def test_target_text_is_the_split_decoded_with_separators_as_line_breaks(workdir):
    (workdir / "a.txt").write_text("First tale: the hunter waits.<|endoftext|>Second tale: the witch sings." * 40)
    data = TokenData(prepare([workdir / "a.txt"], tokenizer="char").out_dir)
    text = data.target_text("train") + data.target_text("val")
    assert "<|endoftext|>" not in text and "the hunter waits.\nSecond tale" in text
    assert len(text) == len(data.splits["train"]) + len(data.splits["val"])  # one character a token


def test_evaluations_and_a_fine_tunes_base_report_their_voice_and_runs_shows_them(corpus, workdir, monkeypatch):
    data = prepare([corpus], tokenizer="char").out_dir
    settings = {**TINY_TRAIN, "sample_tokens": 300}
    train(data, "nano", TINY_MODEL, settings, compile="off")  # tales-1: from scratch, no base
    tales = corpus.read_text()[:2000]
    drawn = iter(["I still have that contract. " * 12] + [tales] * 10)  # the base loops; the fine-tune writes the text
    monkeypatch.setattr(Evaluator, "sample", lambda self, model: next(drawn))
    out = io.StringIO()
    train(None, None, None, {**settings, "steps": 10}, compile="off", init_from="runs/tales-1",
          reporter=TrainDisplay(Console(file=out, width=200, force_terminal=False)))
    evals = [json.loads(line) for line in (workdir / "runs/tales-2/metrics.jsonl").read_text().splitlines()
             if "val_loss" in line]
    reference = StyleReference.from_text(TokenData(data).target_text("val"))
    assert evals and all(r["loops"] == round(loops([tales]), 4) for r in evals)
    assert all(r["style"] == round(reference.distance([tales]), 3) for r in evals)
    base = json.loads((workdir / "runs/tales-2/run.json").read_text())["base_voice"]
    assert base["loops"] > evals[-1]["loops"] and base["style"] > evals[-1]["style"]  # closer than the base was
    assert "base_voice" not in json.loads((workdir / "runs/tales-1/run.json").read_text())
    shown = out.getvalue()
    assert "the base model's sample, before training" in shown
    assert f"style distance {evals[-1]['style']:.2f} (base {base['style']:.2f})" in shown
    out = io.StringIO()  # a resumed run names the base's beside its samples' too
    train(None, None, None, {"steps": 20}, resume=True, run=workdir / "runs/tales-2", compile="off",
          reporter=TrainDisplay(Console(file=out, width=200, force_terminal=False)))
    assert f"(base {base['style']:.2f})" in out.getvalue() and "before training" not in out.getvalue()
    rows = {Path(r["run"]).name: r for r in json.loads(invoke("runs", "--json").stdout)}
    assert rows["tales-2"]["style"] == evals[-1]["style"] and rows["tales-2"]["base_style"] == base["style"]
    assert rows["tales-1"]["base_style"] is None and rows["tales-1"]["style"] is not None
    console = Console(width=200, record=True)
    console.print(runs_table(list(rows.values()), 200))
    assert f"{evals[-1]['style']:.2f} ({base['style']:.2f})" in console.export_text()
    sampled = invoke("sample", "--checkpoint", "runs/tales-2/best.safetensors", "--seed", "3", "--max-new-tokens", "400",
                     "--num-samples", "4")
    assert sampled.exit_code == 0, sampled.output
    closing = sampled.output.strip().splitlines()[-1]
    assert closing.startswith("copied: ") and " · loops " in closing
    assert f" · style distance " in closing and f"(base {base['style']:.2f})" in closing
    pytest.importorskip("matplotlib")
    assert invoke("runs", "--plot", "voice.png", "runs/tales-2").exit_code == 0


def test_runs_from_before_the_voice_report_list_and_plot_with_dashes(workdir):
    old = ROOT / "tests" / "fixtures" / "a57ec7e" / "runs"
    rows = json.loads(invoke("runs", "--json", old).stdout)
    assert rows and all(r["loops"] is None and r["style"] is None and r["base_style"] is None for r in rows)
    table = invoke("runs", old)
    assert table.exit_code == 0 and "style" in table.output
    assert all(line.rstrip("│ ").endswith("-") for line in table.output.splitlines() if "full" in line or "lora" in line)
    pytest.importorskip("matplotlib")
    plotted = invoke("runs", "--plot", "old.png", old / "full")
    assert plotted.exit_code == 0, plotted.output
