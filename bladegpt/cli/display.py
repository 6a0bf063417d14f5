"""The live training display: a rich progress line, evaluation lines and samples as they come, each sample with
its copy meter and voice report."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from bladegpt.config import plural
from bladegpt.data.copyindex import describe
from bladegpt.generate import voice
from bladegpt.train.trainer import Reporter


def _clock(seconds: float) -> str:
    """m:ss (h:mm:ss past an hour), as the bar's time column writes it."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def _si(x: float | None) -> str:
    """Tokens a second in thousands or millions; "-" where none was measured (null in metrics.jsonl)."""
    if x is None:
        return "-"
    return f"{x / 1e3:.1f}k" if x < 1e6 else f"{x / 1e6:.2f}M"


BAR_WIDTH = 16
ETA_WIDTH = 7  # TimeRemainingColumn's h:mm:ss


class TrainDisplay(Reporter):
    def __init__(self, console: Console | None = None):
        self.console = console or Console()
        self.progress = Progress(console=self.console)
        self.task = None
        self.stats = {"loss": "-", "val": "-", "lr": "-", "speed": "-", "mfu": "-"}
        self.by_time = False
        self.total = 0
        self.base_voice: dict = {}  # the base model's voice report, in a run from a model

    def _count(self, step: int, elapsed: float) -> str:
        """Steps done of the planned steps; under --time, the step and the clock against the budget."""
        if self.by_time:
            return f"step {step:,} {_clock(elapsed)}/{_clock(self.total)}"
        return f"{step:,}/{self.total:,}"

    def _fields(self, count: str) -> str:
        """The stats after the bar, the last ones left out where the terminal is too narrow for them all:
        the step count (and the ETA) are never what gets cut."""
        s = self.stats
        parts = [f"loss {s['loss']}", f"val {s['val']}", f"lr {s['lr']}", f"{s['speed']} tok/s", f"MFU {s['mfu']}"]
        room = self.console.width - len("train") - BAR_WIDTH - len(count) - (0 if self.by_time else ETA_WIDTH + 1) - 4
        while len(parts) > 2 and len("  ".join(parts)) > room:
            parts.pop()
        return "  ".join(parts)

    def _show(self, step: int, elapsed: float, completed: float) -> None:
        count = self._count(step, elapsed)
        self.progress.update(self.task, completed=completed, count=count, stats=self._fields(count))

    def start(self, info: dict) -> None:
        c = self.console
        c.print(f"[bold]Run[/] {info['run_dir']}  ·  {info['params'] / 1e6:.2f}M parameters  ·  "
                f"{info['tokens_per_step']:,} tokens/step  ·  {info['optimizer']}" + (f"  ·  {info['world']} processes" if info["world"] > 1 else ""))
        c.print(f"[bold]Runtime[/] {info['runtime']}")
        self.by_time = info["time_budget_s"] is not None
        if not self.by_time:
            passes = info["steps"] * info["tokens_per_step"] / max(1, info["train_tokens"])
            c.print(f"[bold]Data[/] {plural(info['steps'], 'step')} read the {info['train_tokens']:,} training tokens "
                    f"~{passes:.1f} times" + ("; a small model starts to memorise somewhere past 20-50 passes: "
                                              "best.safetensors keeps the step with the lowest val loss, and early "
                                              "stopping ends the run past it" if passes > 20 else ""))
        self.total = info["time_budget_s"] if self.by_time else info["steps"]
        # under --time the clock against the budget says what an ETA would
        eta = () if self.by_time else (TimeRemainingColumn(),)
        self.progress.columns = (TextColumn("[bold]train"), BarColumn(bar_width=BAR_WIDTH),
                                 TextColumn("{task.fields[count]}"), *eta, TextColumn("{task.fields[stats]}"))
        self.progress.start()
        self.task = self.progress.add_task("train", total=self.total, count="", stats="")
        self._show(info["step"], 0.0, 0 if self.by_time else info["step"])

    def message(self, text: str) -> None:
        self.console.print(f"[yellow]{escape(text)}[/]")

    def log(self, r: dict) -> None:
        self.stats.update(loss=f"{r['loss']:.3f}", lr=f"{r['lr']:.2e}", speed=_si(r.get("tok_per_s")),
                          mfu=f"{r['mfu']:.1%}" if r.get("mfu") is not None else "n/a")
        self._show(r["step"], r["elapsed"], r["elapsed"] if self.by_time else r["step"])

    def eval(self, r: dict, sample: str | None) -> None:
        self.stats["val"] = f"{r['val_loss']:.3f}"
        # Evaluations move the bar too: a run shorter than --log-interval logs no step line.
        self._show(r["step"], r["elapsed"], r["elapsed"] if self.by_time else r["step"])
        self.console.print(f"step {r['step']:>6}  val loss [bold cyan]{r['val_loss']:.4f}[/]  "
                           f"val bpb {r['val_bpb']:.4f}  ({r['elapsed']:.0f} s)")
        if sample:
            lines = [describe(r["copied"], r.get("longest_copy"))] if "copied" in r else []
            if "loops" in r:
                lines.append(voice.describe(r["loops"], r.get("style"), self.base_voice.get("style")))
            self.console.print(Panel(escape(sample.strip()), title=f"sample at step {r['step']}",
                                     subtitle=escape(" · ".join(lines)) if lines else None, style="dim"))

    def base(self, report: dict, sample: str | None) -> None:
        """The base model's sample and voice report before training; each later sample's report names its style."""
        self.base_voice = report
        if sample:
            self.console.print(Panel(escape(sample.strip()), title="the base model's sample, before training",
                                     subtitle=escape(voice.describe(report.get("loops"), report.get("style"))),
                                     style="dim"))

    def close(self) -> None:
        self.progress.stop()
