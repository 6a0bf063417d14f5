"""`bladegpt runs --plot`: a run's train and val curves as a picture, to see whether it still learns or
already memorises, and below them what its eval samples copied and how their voice went. matplotlib is an optional extra (`bladegpt[plot]`), imported only here."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from bladegpt import __version__
from bladegpt.errors import UserError
from bladegpt.files import atomic_write
from bladegpt.runs import is_number, read_metrics, read_run, summarize

SOFTWARE = "bladegpt runs --plot"  # written into the PNG: a later plot may replace a file that says so
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WIDTH, HEIGHT, ROW_HEIGHT, DPI = 12.0, 4.8, 2.4, 100  # inches; the samples' rows are added when recorded


@dataclass
class Curves:
    """One run's points: (step, elapsed seconds, value), in nats per token or in bits per byte."""

    name: str
    title: str  # dataset, start and state, for the picture's title
    train: list[tuple[int, float, float]] = field(default_factory=list)
    val: list[tuple[int, float, float]] = field(default_factory=list)
    copied: list[tuple[int, float, float]] = field(default_factory=list)  # share of sampled spans, 0-1
    loops: list[tuple[int, float, float]] = field(default_factory=list)  # share of the sample's 4-grams repeated, 0-1
    style: list[tuple[int, float, float]] = field(default_factory=list)  # Burrows's Delta from the held-out text
    base_style: float | None = None  # the base model's sample's, in a run from a model
    stopped_early: bool = False


def curves(run_dir: Path, bpb: bool = False) -> Curves:
    """The points of a run's metrics.jsonl. Train points come from train records (an eval record's
    `loss` repeats the last logged one); val points, the copy meter (`copied`) and the voice report (`loops`,
    `style`) from eval records, the base's style from run.json."""
    run_dir = Path(run_dir)
    summary = summarize(run_dir)
    c = Curves(run_dir.name, f"{summary['dataset']} · {summary['start']} · {summary['state']}",
               stopped_early=summary["state"] == "stopped early", base_style=summary["base_style"])
    records = read_metrics(run_dir)
    val_key = "val_bpb" if bpb else "val_loss"
    train_scale = _train_bpb_scale(run_dir, records) if bpb else 1.0
    for r in records:
        elapsed = r["elapsed"] if is_number(r.get("elapsed")) else math.nan
        if "val_loss" in r:
            if is_number(r.get(val_key)):
                c.val.append((r["step"], elapsed, r[val_key]))
        elif is_number(r.get("loss")) and train_scale is not None:
            c.train.append((r["step"], elapsed, r["loss"] * train_scale))
        for key in ("copied", "loops", "style"):
            if "val_loss" in r and is_number(r.get(key)):
                getattr(c, key).append((r["step"], elapsed, r[key]))
    return c


def _train_bpb_scale(run_dir: Path, records: list[dict]) -> float | None:
    """nats/token -> bits/byte for the train split: tokens / (ln 2 * bytes), from the dataset's counts
    (prepare's meta.json), else the val split's (its evaluations measure both units); None if neither."""
    import json

    try:
        meta = json.loads((Path(read_run(run_dir)["dataset"]) / "meta.json").read_text())
        return meta["train_tokens"] / (math.log(2) * meta["train_bytes"])
    except (UserError, OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        pass
    for r in records:
        if is_number(r.get("val_loss")) and is_number(r.get("val_bpb")) and r["val_loss"] > 0:
            return r["val_bpb"] / r["val_loss"]
    return None


def check_out(out: Path) -> Path:
    """The picture's path, checked before any work: a .png in an existing folder, and never a file
    that BladeGPT did not draw (a plot drawn earlier is replaced, so the command can be run again)."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--plot writes a PNG picture; give it a file name ending in .png, not {out.name}.")
    if not out.parent.is_dir():
        raise UserError(f"No folder {out.parent} to write {out.name} in; create it or pick another path.")
    if out.is_symlink():  # replacing it would drop the user's link for a file
        raise UserError(f"{out} is a link; give --plot a file name of its own (BladeGPT replaces no link).")
    if out.is_dir() or (out.exists() and not _drawn_here(out)):
        raise UserError(f"{out} exists and is not a plot BladeGPT drew; pick another file name "
                        "(BladeGPT never replaces files it did not make).")
    return out


def _drawn_here(path: Path) -> bool:
    """Whether a PNG's text chunks, written before its pixels, name this command as its Software."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != PNG_MAGIC:
                return False
            while len(head := f.read(8)) == 8:
                size, kind = int.from_bytes(head[:4], "big"), head[4:]
                if kind in (b"IDAT", b"IEND"):
                    return False
                body = f.read(size)
                f.seek(4, 1)  # CRC
                if kind == b"tEXt" and body.partition(b"\0")[0] == b"Software":
                    return body.partition(b"\0")[2].startswith(SOFTWARE.encode())
    except OSError:
        return False
    return False


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds < 300:
        return 1.0, "s"
    return (60.0, "min") if seconds < 3 * 3600 else (3600.0, "h")


def plot(run_dirs: list[Path], out: Path, bpb: bool = False) -> Path:
    """Draw each run's train and val curves against step (left) and wall time (right), the best val
    point starred, an early stop marked; below, where a run recorded them, a row of the eval samples' copied
    and looping shares and a row of their style distance (the base's dashed)."""
    out = check_out(out)
    if not run_dirs:
        raise UserError("No runs to plot; train one with `bladegpt train`, or name run folders after --plot FILE.")
    try:
        from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    except ImportError:
        raise UserError("--plot needs matplotlib, which is not installed: pip install 'bladegpt[plot]'.") from None
    runs = [curves(d, bpb) for d in run_dirs]
    if not any(c.train or c.val for c in runs):
        raise UserError(f"{', '.join(c.name for c in runs)}: no losses recorded yet (none in metrics.jsonl); "
                        "plot once a run has logged its first steps.")
    rows = (["shares"] if any(c.copied or c.loops for c in runs) else []) + (["style"] if any(c.style for c in runs) else [])
    fig = Figure(figsize=(WIDTH, HEIGHT + ROW_HEIGHT * len(rows)), dpi=DPI, layout="constrained")
    grid = fig.add_gridspec(1 + len(rows), 2, height_ratios=[HEIGHT] + [ROW_HEIGHT] * len(rows))
    by_step = fig.add_subplot(grid[0, 0])
    by_time = fig.add_subplot(grid[0, 1], sharey=by_step)
    longest = max((p[1] for c in runs for p in c.train + c.val + c.copied if not math.isnan(p[1])), default=0.0)
    scale, unit = _time_unit(longest)
    for i, c in enumerate(runs):
        for ax, x, div in ((by_step, 0, 1.0), (by_time, 1, scale)):
            _draw(ax, c, x, div, f"C{i % 10}", "" if len(runs) == 1 else f"{c.name} ")
    by_step.set(xlabel="step", ylabel="bits per byte" if bpb else "loss (nats per token)")
    by_time.set(xlabel=f"wall time ({unit}, training and evaluation)")
    by_time.tick_params(labelleft=False)
    _fit_y(by_step, runs)
    by_step.legend(fontsize="small", loc="best")
    for row, kind in enumerate(rows, start=1):
        for x, ax, div in ((0, fig.add_subplot(grid[row, 0], sharex=by_step), 1.0),
                           (1, fig.add_subplot(grid[row, 1], sharex=by_time), scale)):
            for i, c in enumerate(runs):
                _draw_samples(ax, c, kind, x, div, f"C{i % 10}", "" if len(runs) == 1 else f"{c.name} ")
            label = "eval sample (%)" if kind == "shares" else "style distance"
            ax.set(xlabel="step" if x == 0 else f"wall time ({unit})", ylabel=label if x == 0 else "")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            if x == 0:
                ax.legend(fontsize="small", loc="best")
    if len(runs) == 1:
        fig.suptitle(f"{runs[0].name}: train and val {'bits per byte' if bpb else 'loss'}  ({runs[0].title})")
    else:
        names = [c.name for c in runs]
        fig.suptitle(f"{len(runs)} runs: {', '.join(names[:6])}" + (f" and {len(names) - 6} more" if len(names) > 6 else ""))
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", metadata={"Software": f"{SOFTWARE} {__version__}"}))
    return out


def _draw(ax, c: Curves, x: int, div: float, color: str, label: str) -> None:
    """One run on one panel: x is 0 for steps, 1 for seconds (divided by `div` into the axis's unit)."""
    if c.train:
        ax.plot([p[x] / div for p in c.train], [p[2] for p in c.train], color=color, alpha=0.45, linewidth=1.2,
                label=f"{label}train")
    if c.val:
        ax.plot([p[x] / div for p in c.val], [p[2] for p in c.val], color=color, marker="o", markersize=3.5,
                linewidth=2, label=f"{label}val")
        best = min(c.val, key=lambda p: p[2])
        ax.plot(best[x] / div, best[2], marker="*", markersize=16, color=color, markeredgecolor="black",
                linestyle="none", label=f"{label}best val {best[2]:.3f} at step {best[0]:,}")
        if c.stopped_early:
            last = c.val[-1]
            ax.axvline(last[x] / div, color=color, linestyle=":", linewidth=1.5,
                       label=f"{label}stopped early at step {last[0]:,}")
    ax.grid(alpha=0.3)


def _draw_samples(ax, c: Curves, kind: str, x: int, div: float, color: str, label: str) -> None:
    """One run's eval samples on one panel: the copied and looping shares (kind "shares"), or the style distance
    with the base model's sample's as a dashed line ("style")."""
    if kind == "shares":
        for points, marker, name in ((c.copied, "o", "copied"), (c.loops, "s", "loops")):
            if points:
                ax.plot([p[x] / div for p in points], [100 * p[2] for p in points], color=color, marker=marker,
                        markersize=3, linestyle="-" if name == "copied" else "--", label=f"{label}{name}")
        return
    if c.style:
        ax.plot([p[x] / div for p in c.style], [p[2] for p in c.style], color=color, marker="o", markersize=3,
                label=f"{label}style distance")
    if c.base_style is not None:
        ax.axhline(c.base_style, color=color, linestyle="--", linewidth=1.2, label=f"{label}the base's {c.base_style:.2f}")


def _fit_y(ax, runs: list[Curves]) -> None:
    """Start the y axis just below the lowest point and end it above the val curves' first point, so
    the first steps' steep fall does not flatten the end of the run, where memorising shows."""
    values = [p[2] for c in runs for p in c.train + c.val]
    low = min(values)
    firsts = [c.val[0][2] for c in runs if c.val] or [max(values)]
    high = max(firsts + [p[2] for c in runs for p in c.val[1:]])
    pad = 0.05 * (high - low or 1.0)
    ax.set_ylim(low - pad, high + pad)
