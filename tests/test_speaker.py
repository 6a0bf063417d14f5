"""prepare --speaker: one character's lines the targets, the rest context, through every path that reads them."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bladegpt.checkpoint import load_checkpoint
from bladegpt.data.dataset import TokenData
from bladegpt.data.speaker import prepare_speaker, read_script, split_exchanges
from bladegpt.data.voices import read_turns
from bladegpt.generate.chat import recorded_frame, recorded_opening
from bladegpt.train import train
from bladegpt.train.trainer import Reporter, Trainer, target_weights
from typer.testing import CliRunner

from bladegpt.cli import app
from tests.conftest import TINY_MODEL, TINY_TRAIN
from tests.safety import assert_one_line_error, invoke
from tests.test_trainer import CtrlCAt, assert_resume_follows
from tests.voices import screenplay_text, snapshot, write

EXACT = dict(device="cpu", precision="fp32", compile="off")


@pytest.fixture
def script(workdir) -> Path:
    return write(workdir, "blade.txt", screenplay_text(40))


def k_lines(path: Path) -> list[str]:
    return [t.text for t in read_turns(path)[1] if t.kind == "speech" and t.speaker == "K"]


def test_the_targets_are_their_lines_and_the_rest_is_context(script):
    result = prepare_speaker([script], ["k"], tokenizer="char")
    meta = result.meta
    assert result.out_dir == Path("datasets/blade-K")
    for name in ("train_mask.bin", "val_mask.bin", "train.bin", "val.bin", "tokenizer.json", "meta.json"):
        assert (result.out_dir / name).is_file()
    assert meta["speaker"]["name"] == "K" and meta["speaker"]["aliases"] == ["k"]
    assert meta["speaker"]["interlocutor"] == "JOI"  # who speaks before K most often
    assert meta["source_formats"] == [{"path": str(script), "format": "screenplay"}]
    assert meta["speaker"]["target_lines"] == 40 and meta["speaker"]["context_lines"] > 40
    assert meta["target_tokens"] == meta["train_target_tokens"] + meta["val_target_tokens"]
    assert meta["target_tokens"] + meta["context_tokens"] == meta["train_tokens"] + meta["val_tokens"]
    data = TokenData(result.out_dir)
    said = data.target_text("train") + data.target_text("val")
    assert said == "".join(f"{line}\n\n" for line in k_lines(script))  # each line, and the end of their turn
    whole = data.tokenizer.decode(data.splits["train"].tolist())
    assert "JOI:\nWhere were you tonight, K?\n\n" in whole or "JOI:\nDid you find the file, K?\n\n" in whole
    assert "INT. SPINNER - NIGHT\n\n" in whole and "(quietly)\n\nK:\n" in whole  # the action: context
    assert not any("JOI" in line or "Scene" in line for line in said.split("\n"))
    assert meta["chat_frame"] == {"kind": "play", "voice": "K", "you": "JOI"}
    assert meta["opening"].startswith(("INT.", "EXT.")) and meta["opening"].endswith("K:\n")


@pytest.mark.parametrize("kind", ["bpe", "gpt2", "char"])
def test_the_ids_are_the_whole_texts_and_the_mask_boundaries_exact(script, kind):
    """The ids are what the text encodes to whole (what chat feeds), and the target tokens spell K's lines
    exactly, each run of them one line and the end of its turn."""
    data = TokenData(prepare_speaker([script], ["K"], tokenizer=kind).out_dir)
    for split in ("train", "val"):
        ids = data.splits[split].tolist()
        assert data.tokenizer.encode(data.tokenizer.decode(ids)) == ids
        mask = data.masks[split].tolist()
        runs = [data.tokenizer.decode(ids[a:b]) for a, b in zip(
            [i for i in range(len(ids)) if mask[i] and (i == 0 or not mask[i - 1])],
            [i + 1 for i in range(len(ids)) if mask[i] and (i + 1 == len(ids) or not mask[i + 1])])]
        assert runs and all(re.fullmatch(r"[A-Z][^\n]*, number \d+\.\n\n", r) for r in runs), runs[:3]


def test_a_token_that_would_cross_a_boundary_is_cut_there():
    from bladegpt.data.speaker import encode_pieces
    from bladegpt.tokenizer import train_tokenizer

    tok = train_tokenizer("gpt2", "")
    assert len(tok.encode("Hello world")) == 2  # "Hello" is one token: "Hel" | "lo" would cross it
    ids, mask = encode_pieces(tok, [("Hel", False), ("lo", True), (" world", False)], "uint16")
    assert tok.decode(ids[mask == 1].tolist()) == "lo" and tok.decode(ids.tolist()) == "Hello world"
    assert tok.decode(ids[: int(np.argmax(mask))].tolist()) == "Hel"


def test_the_val_split_holds_whole_exchanges_about_the_fraction_of_their_bytes(script):
    meta = prepare_speaker([script], ["K"], tokenizer="char", val_fraction=0.2).meta
    data = TokenData(Path("datasets/blade-K"))
    train, val = (data.tokenizer.decode(data.splits[s].tolist()) for s in ("train", "val"))
    assert re.match(r"^(INT|EXT)\. ", val)  # the scene's start: here every exchange is a scene
    assert train.endswith(".\n\n") and bool(data.masks["train"][-1])  # train ends with the end of K's turn
    share = meta["val_target_bytes"] / (meta["val_target_bytes"] + meta["train_target_bytes"])
    assert 0.2 <= share < 0.2 + 1.5 / 40
    script_read = read_script([script], ["K"])
    first, held = split_exchanges(script_read.exchanges, 0.2, "K")
    assert len(first) + len(held) == len(script_read.exchanges) == 40


def test_aliases_are_one_speaker_written_as_the_commonest_spelling(workdir):
    text = screenplay_text(20).replace(" " * 20 + "K\n", " " * 20 + "OFFICER K (V.O.)\n", 5)
    path = write(workdir, "blade.txt", text)
    meta = prepare_speaker([path], ["K", "Officer K"], tokenizer="char").meta
    assert meta["speaker"]["name"] == "K" and meta["speaker"]["target_lines"] == 20
    data = TokenData(Path("datasets/blade-K"))
    assert "OFFICER K" not in data.tokenizer.decode(data.splits["train"].tolist())


def test_a_name_not_found_or_an_srt_is_one_line_and_writes_nothing(script, workdir):
    prose = write(workdir, "plain.txt", "It rained all night in the city, and the street was empty.\n" * 40)
    before = snapshot(workdir)
    assert_one_line_error(invoke("prepare", script, "--speaker", "JO"), "No speaker 'JO'", "closest are JOI")
    assert_one_line_error(invoke("prepare", script, "--speaker", "OFFICER K"), "No speaker 'OFFICER K'", "closest are K")
    assert_one_line_error(invoke("prepare", prose, "--speaker", "K"), "names no speakers (read as prose)",
                          "without --speaker")
    assert_one_line_error(invoke("prepare", script, "--speaker", "K", "--list-speakers"), "--list-speakers",
                          "--speaker")
    srt = write(workdir, "film.srt", "1\n00:00:01,000 --> 00:00:02,000\nHello.\n\n2\n00:00:03,000 --> "
                                     "00:00:04,000\nGoodbye.\n")
    before = snapshot(workdir)
    assert_one_line_error(invoke("prepare", srt, "--speaker", "K"), "SRT", "names no speakers",
                          "without --speaker")
    assert snapshot(workdir) == before


def test_the_cli_names_the_speaker_and_the_counts(script):
    result = invoke("prepare", script, "--speaker", "K", "--tokenizer", "char")
    assert result.exit_code == 0, result.output
    assert "screenplay" in result.output and "play: you speak as JOI, the voice answers as K" in result.output
    assert re.search(r"target lines / tokens\s*│\s*40 /", result.output)


def test_a_dataset_from_before_masks_trains_every_token():
    data = TokenData(Path(__file__).parent / "fixtures" / "a57ec7e" / "datasets" / "tales")
    assert data.masks == {}
    assert data.target_text("val") == data.tokenizer.decode(data.splits["val"].tolist())
    x, y, _ = data.batch("train", torch.tensor([0, 5]), 8)
    assert (y >= 0).all()


def test_targets_outside_the_mask_are_minus_one_and_val_counts_their_bytes_only(script):
    data = TokenData(prepare_speaker([script], ["K"], tokenizer="char").out_dir)
    ix = torch.tensor([0, 40, 100])
    x, y, _ = data.batch("train", ix, 32)
    for row, i in zip(y, ix.tolist()):
        mask = data.masks["train"][i + 1 : i + 33]
        assert torch.equal(row >= 0, mask)
    result = train(data.folder, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 10, "eval_interval": 10,
                                                      "eval_iters": 100}, **EXACT)
    model, _, _ = load_checkpoint(result.run_dir / "best.safetensors")
    ids, mask = data.splits["val"].long(), data.masks["val"]
    T = TINY_MODEL["block_size"]
    nats = n_bytes = 0.0
    with torch.no_grad():  # the val split in back-to-back windows; its last tail as covering_windows reads it
        starts, skips = data.covering_windows("val", T)
        for s, skip in zip(starts.tolist(), skips.tolist()):
            logits = model(ids[None, s : s + T])[0][0]
            nll = torch.nn.functional.cross_entropy(logits, ids[s + 1 : s + 1 + T], reduction="none")
            keep = mask[s + 1 : s + 1 + T].clone()
            keep[:skip] = False
            nats += float(nll[keep].sum())
            n_bytes += sum(len(data.tokenizer.token_bytes(int(t))) for t in ids[s + 1 : s + 1 + T][keep])
    assert n_bytes == data.meta["val_target_bytes"] - 0  # every target byte of val, once (the first is a target?)
    assert result.best_val_loss is not None
    assert result.history[-1]["val_bpb"] == pytest.approx(nats / (np.log(2) * n_bytes), rel=1e-4)


@pytest.mark.parametrize("context_weight", [0.0, 0.3])
def test_accumulation_weighs_every_target_alike(script, context_weight):
    """Micro-batches holding different numbers of targets: accum 4 steps as one batch of 8 does (the mean of
    per-micro-batch means would not), context tokens counted at their weight."""
    data = prepare_speaker([script], ["K"], tokenizer="char").out_dir
    base = dict(steps=3, eval_interval=3, warmup_steps=1, optimizer="adamw", context_weight=context_weight)
    big = train(data, "nano", TINY_MODEL, {**TINY_TRAIN, **base, "batch_size": 8, "accum": 1}, **EXACT)
    acc = train(data, "nano", TINY_MODEL, {**TINY_TRAIN, **base, "batch_size": 8, "accum": 4}, **EXACT)
    a, _, _ = load_checkpoint(big.run_dir / "last.safetensors")
    b, _, _ = load_checkpoint(acc.run_dir / "last.safetensors")
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-5), name
    losses = [[r["loss"] for r in run.history if "val_loss" not in r] for run in (big, acc)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_windows_without_a_target_weigh_nothing_and_never_make_a_nan(script):
    from bladegpt.config import ModelConfig, TrainConfig
    from bladegpt.runtime import Runtime
    from bladegpt.train.distributed import Distributed

    data = TokenData(prepare_speaker([script], ["K"], tokenizer="char").out_dir)
    T = 8
    empty = [i for i in range(len(data.masks["train"]) - T - 1) if not data.masks["train"][i + 1 : i + 1 + T].any()]
    cfg = TrainConfig(**{**TINY_TRAIN, "batch_size": 4, "accum": 2, "optimizer": "adamw", "weight_decay": 0.0})
    trainer = Trainer(ModelConfig(**{**TINY_MODEL, "block_size": T, "vocab_size": data.tokenizer.vocab_size}), cfg,
                      data, Path("runs/x"), Runtime(torch.device("cpu"), "fp32", "sdpa", False), "off",
                      Distributed(), Reporter())
    starts = torch.tensor(empty[:4]).view(2, 2)
    assert torch.equal(target_weights(data, starts, T, 1), torch.zeros(2))
    before = [p.detach().clone() for p in trainer.model.parameters()]
    data.random_starts = lambda *a, **k: starts  # a global batch with no target at all
    assert torch.isfinite(trainer.train_step())
    assert all(torch.equal(p, q) for p, q in zip(before, trainer.model.parameters()))  # zero gradient, no decay


def tiny_trainer(data: TokenData, **train):
    from bladegpt.config import ModelConfig, TrainConfig
    from bladegpt.runtime import Runtime
    from bladegpt.train.distributed import Distributed

    cfg = TrainConfig(**{**TINY_TRAIN, "batch_size": 4, "accum": 2, "optimizer": "adamw", **train})
    torch.manual_seed(0)
    return Trainer(ModelConfig(**{**TINY_MODEL, "block_size": 8, "vocab_size": data.tokenizer.vocab_size}), cfg,
                   data, Path("runs/x"), Runtime(torch.device("cpu"), "fp32", "sdpa", False), "off",
                   Distributed(), Reporter())


def test_context_weight_keeps_the_context_as_targets_at_that_weight(script):
    data = TokenData(prepare_speaker([script], ["K"], tokenizer="char").out_dir)
    ix = torch.tensor([0, 40, 100])
    _, masked, none = data.batch("train", ix, 32)
    _, y, weights = data.batch("train", ix, 32, 0.3)
    assert none is None and (y >= 0).all() and (masked < 0).any()
    assert torch.equal(weights, torch.where(masked >= 0, 1.0, 0.3))
    _, val_y, val_weights = data.batch("val", ix, 32)  # as evaluation reads it: the speaker's tokens alone
    assert val_weights is None and torch.equal(val_y >= 0, torch.stack([data.masks["val"][i + 1:i + 33] for i in ix]))


def test_context_weight_one_trains_the_whole_text_and_zero_the_lines_alone(script):
    """At 1 a step is the unmasked text's step, at 0 the masked one's: the weight moves between the two."""
    data = TokenData(prepare_speaker([script], ["K"], tokenizer="char").out_dir)
    starts = torch.tensor([[0, 40], [100, 7]])
    data.random_starts = lambda *a, **k: starts
    steps = {}
    for name, weight in (("one", 1.0), ("zero", 0.0), ("half", 0.5)):
        trainer = tiny_trainer(data, context_weight=weight)
        steps[name] = float(trainer.train_step()), [p.detach().clone() for p in trainer.model.parameters()]
    mask = data.masks.pop("train")  # the same text, every token a target
    try:
        plain = tiny_trainer(data)
        steps["plain"] = float(plain.train_step()), [p.detach().clone() for p in plain.model.parameters()]
    finally:
        data.masks["train"] = mask
    masked = tiny_trainer(data)
    steps["masked"] = float(masked.train_step()), [p.detach().clone() for p in masked.model.parameters()]
    for a, b in (("one", "plain"), ("zero", "masked")):
        assert steps[a][0] == pytest.approx(steps[b][0], abs=1e-6)
        assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(steps[a][1], steps[b][1]))
    assert not all(torch.allclose(p, q, atol=1e-6) for p, q in zip(steps["half"][1], steps["one"][1]))
    assert not all(torch.allclose(p, q, atol=1e-6) for p, q in zip(steps["half"][1], steps["zero"][1]))


def test_a_speakers_run_weighs_their_context_by_default_and_says_so(script, workdir):
    from bladegpt.train.recipes import SPEAKER_CONTEXT_WEIGHT

    prepare_speaker([script], ["K"], tokenizer="char")
    said = invoke("train", "--preset", "nano", "--steps", "2", "--sample-tokens", "0", "--run", "runs/default")
    assert said.exit_code == 0, said.output
    assert f"--context-weight {SPEAKER_CONTEXT_WEIGHT:g}" in said.output and "beside K's own" in said.output
    given = invoke("train", "--preset", "nano", "--steps", "2", "--sample-tokens", "0", "--run", "runs/masked",
                   "--context-weight", "0")
    assert given.exit_code == 0 and "--context-weight" not in given.output, given.output
    recorded = {name: json.loads((workdir / "runs" / name / "run.json").read_text())["train"]["context_weight"]
                for name in ("default", "masked")}
    assert recorded == {"default": SPEAKER_CONTEXT_WEIGHT, "masked": 0.0}


def test_train_help_gives_the_context_weights_default_a_speakers_run_takes():
    from bladegpt.train.recipes import SPEAKER_CONTEXT_WEIGHT

    shown = " ".join(invoke("train", "--help").output.replace("│", " ").split())
    assert f"[default: {SPEAKER_CONTEXT_WEIGHT:g} on a speaker's dataset" in shown, shown


def test_context_weight_mistakes_are_one_line(script, workdir):
    (workdir / "tale.txt").write_text("Once upon a time there was a tale to tell. " * 300)
    assert invoke("prepare", "tale.txt", "--tokenizer", "char").exit_code == 0
    assert_one_line_error(invoke("train", "--preset", "nano", "--steps", "1", "--context-weight", "0.1"),
                          "--context-weight", "every token of datasets/tale is a target", "--speaker NAME")
    assert invoke("train", "--preset", "nano", "--steps", "2", "--sample-tokens", "0", "--run", "runs/tale").exit_code == 0
    assert_one_line_error(invoke("train", "--resume", "--run", "runs/tale", "--steps", "4", "--context-weight", "0.5"),
                          "--context-weight", "--speaker NAME")
    prepare_speaker([script], ["K"], tokenizer="char")
    for bad in ("2", "-0.1", "nan"):
        assert_one_line_error(invoke("train", "--preset", "nano", "--steps", "1", "--context-weight", bad),
                              "--context-weight must be in [0, 1]")


def test_a_masked_run_resumes_exactly(script):
    prepare_speaker([script], ["K"], tokenizer="char")
    settings = {**TINY_MODEL, "dropout": 0.1}
    whole = train(None, "nano", settings, TINY_TRAIN, compile="off")
    cut = train(None, "nano", settings, TINY_TRAIN, compile="off", reporter=CtrlCAt(15))
    resumed = train(resume=True, run=cut.run_dir, compile="off")
    assert resumed.step == 30
    assert_resume_follows(whole, resumed, 15)


def test_the_copy_meter_holds_samples_against_their_lines_only(workdir):
    from bladegpt.data import copymeter

    joi = "The lamps along the canal went out one by one, and nobody came to relight them."
    k = "I counted forty-one doors on the way down and every single one of them was locked."
    text = "".join(f"INT. ROOM - NIGHT\n\n{' ' * 20}JOI\n{' ' * 10}{joi} {i}\n\n{' ' * 20}K\n{' ' * 10}{k} {i}\n\n"
                   for i in range(30))
    out = prepare_speaker([write(workdir, "room.txt", text)], ["K"], tokenizer="char").out_dir
    meter = copymeter.for_dataset(out)
    assert meter.measure([k]).record()["copied"] > 0.9
    assert meter.measure([joi]).record()["copied"] == 0.0


def test_chat_speaks_as_the_other_party_and_sample_opens_a_scene(script, workdir):
    prepare_speaker([script], ["K"], tokenizer="char")
    result = train(None, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 4, "eval_interval": 4}, compile="off")
    best = result.run_dir / "best.safetensors"
    frame = recorded_frame(best)
    assert (frame.user("Hello."), frame.turn()) == ("JOI:\nHello.\n\n", "K:\n")
    assert recorded_opening(best).endswith("K:\n")
    talk = CliRunner().invoke(app, ["chat", "--checkpoint", str(best), "--seed", "1", "--max-new-tokens", "10"],
                              input="Where were you?\n")
    assert talk.exit_code == 0 and "you speak as JOI, the voice answers as K" in " ".join(talk.output.split())
    other = CliRunner().invoke(app, ["chat", "--checkpoint", str(best), "--as", "MADAM", "--max-new-tokens", "5"],
                               input="Hi\n")
    assert other.exit_code == 0 and "you speak as MADAM" in " ".join(other.output.split()), other.output
    assert_one_line_error(invoke("chat", "--checkpoint", best, "--as", "A:B"), "--as", "colons")
    assert_one_line_error(invoke("chat", "--checkpoint", best, "--as", "k"), "--as k is the voice itself", "--as JOI")
    spelled = CliRunner().invoke(app, ["chat", "--checkpoint", str(best), "--as", "madam", "--max-new-tokens", "5"],
                                 input="Hi\n")  # the script's spelling, the one the model learnt
    assert spelled.exit_code == 0 and "you speak as MADAM" in " ".join(spelled.output.split()), spelled.output
    stranger = CliRunner().invoke(app, ["chat", "--checkpoint", str(best), "--as", "NOBODY", "--max-new-tokens", "5"],
                                  input="Hi\n")
    assert stranger.exit_code == 0 and "NOBODY never speaks in the text" in " ".join(stranger.output.split())
    sample = invoke("sample", "--checkpoint", best, "--seed", "1", "--max-new-tokens", "10", "--no-copy-check")
    assert sample.exit_code == 0 and sample.stdout.startswith(recorded_opening(best)), sample.output
    assert json.loads((result.run_dir / "run.json").read_text())["opening"] == recorded_opening(best)


def assert_val_counts_their_tokens_only(result, meta) -> None:
    """bits per byte = loss per target token x target tokens / target bytes: the evaluation read the speaker's
    tokens of the val split, each once, and their bytes only."""
    for r in (r for r in result.history if "val_loss" in r):
        expected = r["val_loss"] * meta["val_target_tokens"] / (np.log(2) * meta["val_target_bytes"])
        assert r["val_bpb"] == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("how", ["fine-tune", "lora"])
def test_fine_tune_and_lora_score_their_lines_only(script, how):
    pytest.importorskip("transformers")
    from bladegpt.lora import LoraConfig
    from tests.families import tiny_family
    from tests.test_hf_tokenizer import build_folder

    folder = build_folder(script.parent / "tiny-smollm", "smollm")
    size = max(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"].values()) + 1
    tiny_family("llama-gqa-tied", vocab=(size + 63) // 64 * 64).save_pretrained(folder)
    meta = prepare_speaker([script], ["K"], tokenizer_from=str(folder)).meta
    lora = LoraConfig(base_dtype="fp32") if how == "lora" else None
    result = train(None, None, {"block_size": 16}, {**TINY_TRAIN, "steps": 4, "eval_interval": 2, "eval_iters": 100},
                   init_from=str(folder), lora=lora, **EXACT)
    assert all(np.isfinite(r["loss"]) for r in result.history if r.get("loss") is not None)
    assert_val_counts_their_tokens_only(result, meta)


RANK_SCRIPT = """
import os, sys, torch
from bladegpt.train import train
result = train(sys.argv[1], "nano", {model!r}, {settings!r}, device="cpu", precision="fp32", compile="off", run=sys.argv[2])
torch.save(torch.cat([p.detach().flatten() for p in result.model.parameters()]), f"{{sys.argv[2]}}-rank{{os.environ['RANK']}}.pt")
"""


@pytest.mark.slow
def test_two_ranks_weigh_targets_as_one_process(script, workdir):
    """DDP on a masked dataset: each rank's micro-batches hold different numbers of targets, and the two ranks
    step as one process does (every target of the global batch weighs the same)."""
    import os
    import subprocess
    import sys

    from tests.safety import REPO

    settings = {**TINY_TRAIN, "steps": 6, "accum": 4, "eval_interval": 3, "log_interval": 1, "batch_size": 8,
                "optimizer": "adamw"}
    data = prepare_speaker([script], ["K"], tokenizer="char").out_dir
    (workdir / "rank.py").write_text(RANK_SCRIPT.format(model=TINY_MODEL, settings=settings))
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "rank.py",
                    str(data), "runs/ddp"], check=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    single = train(data, "nano", TINY_MODEL, settings, run=workdir / "runs" / "single", **EXACT)
    ranks = [torch.load(workdir / "runs" / f"ddp-rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert torch.equal(ranks[0], ranks[1])
    assert torch.allclose(ranks[0], torch.cat([p.detach().flatten() for p in single.model.parameters()]), atol=1e-4)
    records = [json.loads(line) for line in (workdir / "runs" / "ddp" / "metrics.jsonl").read_text().splitlines()]
    ddp = {r["step"]: r["loss"] for r in records if "val_loss" not in r}
    assert ddp == pytest.approx({r["step"]: r["loss"] for r in single.history if "val_loss" not in r}, abs=1e-4)


def test_a_split_without_a_mask_trains_every_token_beside_a_masked_val(script, workdir):
    """As scripts/speaker_eval.py builds its baselines: train unmasked, val the speaker's lines only."""
    from bladegpt.data.speaker import write_dataset
    from bladegpt.tokenizer import train_tokenizer

    s = read_script([script], ["K"])
    train_part, val_part = split_exchanges(s.exchanges, 0.1, "K")
    pieces = {"train": [(t, True) for e in train_part for t, _ in e], "val": [p for e in val_part for p in e]}
    tok = train_tokenizer("char", "".join(t for e in s.exchanges for t, _ in e))
    meta = write_dataset(workdir / "plain", tok, pieces, {"train": False, "val": True}, {"chat_frame": None}, False)
    data = TokenData(workdir / "plain")
    assert set(data.masks) == {"val"} and meta["train_target_tokens"] == meta["train_tokens"]
    result = train(data.folder, "nano", TINY_MODEL, {**TINY_TRAIN, "steps": 4, "eval_interval": 2,
                                                      "eval_iters": 100}, **EXACT)
    assert_val_counts_their_tokens_only(result, meta)
