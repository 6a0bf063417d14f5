"""`bladegpt runs --plot`: a run's curves as a PNG, drawn from metrics.jsonl however it was left."""

import json
import math
import sys

import numpy as np
import pytest

from bladegpt.cli.plot import DPI, HEIGHT, ROW_HEIGHT, WIDTH, curves
from tests.safety import assert_one_line_error, invoke

pytest.importorskip("matplotlib")
from PIL import Image  # noqa: E402  (matplotlib's own dependency)

BLUE, ORANGE = (31, 119, 180), (255, 127, 14)  # matplotlib's first two colours: run 1 and run 2


def make_run(root, name, metrics: list, lines: tuple = (), stale_evals: int = 0, dataset: str = "/nowhere/tales"):
    """A run folder as training leaves it: run.json, metrics.jsonl, and state.safetensors' header
    (all `runs` reads of it: the step, early stopping's count)."""
    run = root / "runs" / name
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"dataset": dataset, "preset": "nano", "model": {}, "train": {
        "steps": 200, "patience": 3}}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics) + "".join(lines))
    info = json.dumps({"step": metrics[-1]["step"], "elapsed": 100.0, "stale_evals": stale_evals})
    header = json.dumps({"__metadata__": {"info": info}}).encode()
    (run / "state.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    return run


def overfitting(copied: bool = False, shift: float = 0.0) -> list:
    """Train loss falls on; val loss bottoms out at step 120 and rises: a voice memorising its text."""
    records = []
    for step in range(10, 201, 10):
        loss = 2.0 + 5 * math.exp(-step / 20) - step / 400 + shift
        records.append({"step": step, "loss": loss, "lr": 1e-3, "tok_per_s": 500.0, "mfu": None, "elapsed": step * 0.5})
        if step % 20 == 0:
            val = 2.3 + 5 * math.exp(-step / 20) + max(0.0, (step - 120) / 300) + shift
            records.append({"step": step, "loss": loss, "lr": 1e-3, "tok_per_s": 500.0, "val_loss": val,
                            "val_bpb": val / 1.5, "elapsed": step * 0.5 + 0.2,
                            **({"copied": max(0.0, (step - 100) / 1000)} if copied else {})})
    return records


def colour_pixels(image, colour, tolerance=30) -> int:
    """How many pixels of `image` (a PIL image) are within `tolerance` of `colour` in each channel."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return int((np.abs(pixels - np.array(colour)) <= tolerance).all(axis=-1).sum())


def size(*inches: float) -> tuple[int, ...]:
    return tuple(round(x * DPI) for x in inches)


def test_plot_of_a_run_draws_its_curves(workdir):
    records = overfitting()
    records.insert(3, {"step": 15, "loss": None, "lr": 1e-3, "tok_per_s": 0.0, "mfu": None, "elapsed": 8.0})  # non-finite
    run = make_run(workdir, "tales-1", records, lines=('{"kind": "resumed", "step": 100, "note": "new"}\n',
                                                         '[1, 2]\n', '{"step": 210, "loss": 1.'), stale_evals=3)
    result = invoke("runs", "--plot", "curves.png", run)
    assert result.exit_code == 0, result.output
    image = Image.open(workdir / "curves.png")
    assert image.size == size(WIDTH, HEIGHT)
    assert image.getpixel((5, 5))[:3] == (255, 255, 255)  # the background
    # The curves are drawn: blue pixels (train, val, the best star, the early-stop line) in both panels.
    for half in ((0, 0, image.width // 2, image.height), (image.width // 2, 0, image.width, image.height)):
        assert colour_pixels(image.crop(half), BLUE) > 1500

    c = curves(run)
    assert [p[0] for p in c.train] == list(range(10, 201, 10))  # the null loss and unknown records left out
    assert [p[0] for p in c.val] == list(range(20, 201, 20)) and c.stopped_early
    assert min(c.val, key=lambda p: p[2])[0] == 120  # the best point starred


def test_several_runs_side_by_side_and_the_copy_meter(workdir):
    first = make_run(workdir, "tales-1", overfitting(copied=True))
    make_run(workdir, "tales-2", overfitting(shift=0.3))
    assert invoke("runs", "--plot", "both.png", first, workdir / "runs" / "tales-2").exit_code == 0
    image = Image.open(workdir / "both.png")
    assert image.size == size(WIDTH, HEIGHT + ROW_HEIGHT)  # a row for the copy meter
    assert colour_pixels(image, BLUE) > 1500 and colour_pixels(image, ORANGE) > 1500
    assert [p[2] for p in curves(first).copied][-1] == pytest.approx(0.1)
    assert invoke("runs", "--plot", "all.png", workdir / "runs").exit_code == 0  # a folder of runs: all of them


def test_plot_in_bits_per_byte_converts_train_loss_with_the_splits_bytes(workdir):
    data = workdir / "datasets" / "tales"
    data.mkdir(parents=True)
    (data / "meta.json").write_text(json.dumps({"train_tokens": 1000, "train_bytes": 4000}))
    run = make_run(workdir, "tales-1", overfitting(), dataset=str(data))
    c = curves(run, bpb=True)
    assert c.train[0][2] == pytest.approx(overfitting()[0]["loss"] * 1000 / (math.log(2) * 4000))
    assert c.val[0][2] == pytest.approx(overfitting()[2]["val_bpb"])
    assert invoke("runs", "--plot", "bpb.png", "--bpb", run).exit_code == 0


def test_plot_replaces_its_own_picture_and_nothing_else(workdir):
    run = make_run(workdir, "tales-1", overfitting())
    assert invoke("runs", "--plot", "curves.png", run).exit_code == 0
    assert invoke("runs", "--plot", "curves.png", run).exit_code == 0  # plotted again: replaced
    Image.new("RGB", (10, 10)).save(workdir / "holiday.png")
    assert_one_line_error(invoke("runs", "--plot", "holiday.png", run), "holiday.png exists", "not a plot")
    assert Image.open(workdir / "holiday.png").size == (10, 10)
    (workdir / "latest.png").symlink_to(workdir / "curves.png")  # a link to a plot drawn here is still the user's
    assert_one_line_error(invoke("runs", "--plot", "latest.png", run), "latest.png is a link")
    assert (workdir / "latest.png").is_symlink()
    assert_one_line_error(invoke("runs", "--plot", "curves.jpg", run), ".png")
    assert_one_line_error(invoke("runs", "--plot", "nowhere/curves.png", run), "No folder nowhere")
    assert_one_line_error(invoke("runs", "--plot", "x.png", workdir / "runs" / "tales-9"), "No run at")
    assert_one_line_error(invoke("runs", "--bpb", run), "--bpb", "--plot FILE.png")


def test_plot_without_runs_or_losses_is_one_line(workdir):
    assert_one_line_error(invoke("runs", "--plot", "curves.png"), "No trained model found")
    run = make_run(workdir, "tales-1", [{"step": 0, "note": "started"}])
    assert_one_line_error(invoke("runs", "--plot", "curves.png", run), "no losses recorded yet")
    assert not (workdir / "curves.png").exists()


def test_plot_without_matplotlib_is_one_line(workdir, monkeypatch):
    run = make_run(workdir, "tales-1", overfitting())
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert_one_line_error(invoke("runs", "--plot", "curves.png", run), "pip install 'bladegpt[plot]'")


def test_runs_table_of_named_runs(workdir):
    make_run(workdir, "tales-1", overfitting())
    make_run(workdir, "tales-2", overfitting())
    result = invoke("runs", "--json", workdir / "runs" / "tales-2")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["run"].split("/")[-1] for r in rows] == ["tales-2"] and rows[0]["best_step"] == 120
    assert len(json.loads(invoke("runs", "--json").stdout)) == 2
    assert_one_line_error(invoke("runs", "runs/tales-9"), "No run at runs/tales-9")
