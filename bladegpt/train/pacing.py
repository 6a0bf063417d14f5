"""How long a run will take, and what that decides: whether compiling pays, whether the default run fits its
time budget, how often a run under --time evaluates. The arithmetic on measured step times, and the Pacer that
times a run's first steps and re-plans it: every re-plan is a new TrainConfig (dataclasses.replace, so it passes
validation again), never one changed in place."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable

from bladegpt.config import TrainConfig, plural
from bladegpt.train.distributed import Distributed

MIN_EVAL_INTERVAL = 10  # a from-scratch run (or one cut to its time budget) evaluates at most every 10 steps

# First-compile cost we assume before deciding to compile (measured: 25-30 s on a 2-core CPU).
COMPILE_COST_S = {"cpu": 30.0, "cuda": 45.0}
# The step-time saving we count on from compiling; measured ~1.2x on CPU, so be conservative.
COMPILE_GAIN = 0.15
PROBE_STEPS = 6  # eager steps timed before "auto" decides whether compiling pays
ESTIMATE_STEPS = 3  # steps timed before the run says how long it will take
SAMPLE_SHARE = 0.1  # an evaluation's sample may cost this share of the steps before it; else only the last samples
SAMPLE_FREE_S = 1.0  # a sample quicker than this is always written (a small model's, in milliseconds)
RETIME_STEPS = 8  # steps timed after the compile decision, to fit a budgeted run again at its settled speed


def duration(seconds: float) -> str:
    """'90 s', '2.5 min', '12 min', '1.5 h': a time as a person says it (90 s is not '2 min')."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 10:
        return f"{minutes:.1f}".rstrip("0").rstrip(".") + " min"
    return f"{minutes:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def seconds_per_step(cfg: TrainConfig, step_s: float) -> float:
    """A training step's time with its share of evaluations (forward passes only, about a third)."""
    return step_s * (1 + cfg.eval_iters / 3 / cfg.eval_interval)


def paced_interval(elapsed: float, budget_s: float, evals_in_budget: int, step_s: float, eval_s: float) -> int:
    """Steps to the next evaluation under a --time budget, so that the evaluations still owed (the
    budget's `evals_in_budget` in proportion to the time left) fall evenly over the steps that fit in the
    time left, with `step_s` seconds a step and `eval_s` an evaluation (both as measured so far).
    Set again after each evaluation, so a machine that slows down (or speeds up) still gets them all."""
    remaining = max(0.0, budget_s - elapsed)
    owed = round(evals_in_budget * remaining / budget_s)
    owed = max(1, min(owed, int(remaining / (step_s + eval_s))))  # no more than the time left can pay for
    steps = (remaining - owed * eval_s) / max(step_s, 1e-9)
    return max(1, int(steps) // owed)


def compile_pays(remaining_s: float, device_type: str) -> tuple[bool, float, float]:
    """(worth it, time it would save, what the first compile costs) for a run with `remaining_s` to go."""
    cost = COMPILE_COST_S.get(device_type, 60.0)
    return remaining_s * COMPILE_GAIN > cost, remaining_s * COMPILE_GAIN, cost


def fit_to_budget(cfg: TrainConfig, step: int, elapsed: float, per_step: float, budget_s: float, full_steps: int,
                  full_interval: int) -> TrainConfig | None:
    """The schedule cut (or grown back) so the run ends within `budget_s`, never past `full_steps` (its
    length before any cut), with an evaluation interval so that the cut run evaluates as often as the plan
    did (`full_interval` over `full_steps`); None when it stays as it is."""
    steps = min(full_steps, max(step + 1, step + int((budget_s - elapsed) / per_step)))
    if steps == cfg.steps:
        return None
    return dataclasses.replace(cfg, steps=steps, eval_interval=eval_interval(steps, full_steps, full_interval))


def eval_interval(steps: int, full_steps: int, full_interval: int) -> int:
    """The interval that gives `steps` the evaluations `full_interval` gave `full_steps`: the plan's own
    for the whole schedule; in a cut one never shorter than MIN_EVAL_INTERVAL steps (or the plan's own,
    if that is shorter: a fine-tune's few long steps)."""
    if steps >= full_steps:
        return full_interval
    evaluations = max(1, full_steps // full_interval)
    return max(min(full_interval, MIN_EVAL_INTERVAL), steps // evaluations)


class Pacer:
    """A run's clock: its first steps timed say how long the rest will take (and cut a default run to its
    budget), when "auto" compiles, and, under --time, the warmup and evaluations the clock allows. Called once
    a step (timed) and after each evaluation (evaluated); says what it decided through `say`."""

    def __init__(self, cfg: TrainConfig, ddp: Distributed, say: Callable[[str], None]):
        self.ddp, self.say = ddp, say
        self.budget_s: float | None = None  # see budget()
        self.on_resize: Callable[[TrainConfig], None] = lambda cfg: None
        self.full_steps, self.full_interval = cfg.steps, cfg.eval_interval  # the schedule before any cut
        self.next_eval: int | None = None  # under --time with evals_in_budget: see pace()
        self.eval_s: float | None = None  # the quickest evaluation's seconds (a first one may compile)
        self.probe: list[float] = []  # the first steps' seconds
        self.recent: list[float] = []  # step seconds since the last evaluation

    def budget(self, seconds: float, on_resize: Callable[[TrainConfig], None]) -> None:
        """Cut a run whose measured time would pass `seconds` to fit it (the default run, sized to the
        text, on a big text); `on_resize(cfg)` records the new schedule so that --resume follows it."""
        self.budget_s, self.on_resize = seconds, on_resize

    def timed(self, cfg: TrainConfig, seconds: float, step: int, elapsed: float) -> tuple[TrainConfig, bool]:
        """After each step, with its `seconds`: the plan, re-planned where the first steps' times say so, and
        whether it is time to decide on compiling (compile_pays says whether it does)."""
        self.recent.append(seconds)
        probe, decide = self.probe, False
        if len(probe) < PROBE_STEPS + RETIME_STEPS:
            probe.append(seconds)
            if len(probe) == ESTIMATE_STEPS and cfg.time_budget_s is None:
                cfg = self.estimate(cfg, statistics.median(probe[1:]), step, elapsed)  # the first step warms up
            elif len(probe) == ESTIMATE_STEPS and (cfg.evals_in_budget or cfg.warmup_share):
                cfg = self.pace(cfg, statistics.median(probe[1:]), step, elapsed)
            decide = len(probe) == PROBE_STEPS
            if len(probe) == PROBE_STEPS + RETIME_STEPS and self.budget_s is not None:
                cfg = self.estimate(cfg, statistics.median(probe[PROBE_STEPS + 1:]), step, elapsed,
                                    retimed=True)  # past any compile
        return cfg, decide

    def evaluated(self, cfg: TrainConfig, seconds: float, step: int, elapsed: float) -> TrainConfig:
        """After an evaluation that took `seconds`: under --time, the next ones paced again from the step and
        evaluation times measured so far."""
        self.eval_s = seconds if self.eval_s is None else min(self.eval_s, seconds)
        if cfg.evals_in_budget and self.next_eval is not None:
            cfg = self.pace(cfg, statistics.median(self.recent), step, elapsed, self.eval_s)
        self.recent = []
        return cfg

    def sample_due(self, samples_s: list[float] | None, final: bool) -> bool:
        """Whether an evaluation writes a sample: the first and the run's last always do; one between them
        while the last sample took under SAMPLE_FREE_S or at most SAMPLE_SHARE of the steps since the evaluation
        before. A 60-token sample of SmolLM2-135M on a CPU takes about a training step: four of them were 13%
        of the default voice run's wall time (`bench --wall-time`, docs/benchmarks/finetune.md)."""
        return final or not samples_s or samples_s[-1] <= max(SAMPLE_FREE_S, SAMPLE_SHARE * sum(self.recent))

    def eval_due(self, cfg: TrainConfig, step: int) -> bool:
        """Every eval_interval steps, or under --time where the last pacing put the next evaluation."""
        if cfg.evals_in_budget:
            return self.next_eval is not None and step >= self.next_eval
        return step % cfg.eval_interval == 0

    def compile_pays(self, cfg: TrainConfig, step: int, elapsed: float, device_type: str) -> bool:
        """Whether the rest of the run repays a first compile, from the eager steps' measured speed."""
        step_s = statistics.median(self.probe[1:PROBE_STEPS])
        remaining = (max(0.0, cfg.time_budget_s - elapsed) if cfg.time_budget_s is not None
                     else (cfg.steps - step) * step_s)
        worth, saved, cost = compile_pays(remaining, device_type)
        if not self.ddp.broadcast(worth):
            self.say(f"Not compiling: ~{remaining:.0f} s of training left would save ~{saved:.0f} s, "
                     f"less than a ~{cost:.0f} s first compile (force it with --compile on).")
            return False
        return True

    def pace(self, cfg: TrainConfig, step_s: float, step: int, elapsed: float, eval_s: float | None = None) -> TrainConfig:
        """Under --time, size what the plan could not, since it did not know how many steps the clock
        allows: warmup, cfg.warmup_share of them, and cfg.evals_in_budget evaluations spread over them.
        First from the timed first steps, with an evaluation priced at eval_iters/3 steps; the evaluations
        again after each one, from the measured step and evaluation times."""
        first = eval_s is None
        if first:
            eval_s = step_s * cfg.eval_iters / 3  # forward passes only, about a third of a step each
        step_s, eval_s = self.ddp.broadcast(step_s), self.ddp.broadcast(eval_s)
        if first:
            expected = int(step + max(0.0, cfg.time_budget_s - elapsed) / seconds_per_step(cfg, step_s))
        said, changes = [], {}
        if first and cfg.warmup_share:
            changes["warmup_steps"] = min(cfg.warmup_steps, max(1, int(expected * cfg.warmup_share)))
            said.append(f"warming up over {plural(changes['warmup_steps'], 'step')}")
        if cfg.evals_in_budget:
            changes["eval_interval"] = paced_interval(elapsed, cfg.time_budget_s, cfg.evals_in_budget, step_s, eval_s)
            self.next_eval = step + changes["eval_interval"]
            said.append(f"evaluating about {cfg.evals_in_budget} times as the clock allows, the first after "
                        f"{plural(changes['eval_interval'], 'step')}")  # paced again after each one: the interval moves
        if first:
            self.say(f"About {plural(expected, 'step')} fit in {duration(cfg.time_budget_s)} here: {' and '.join(said)}.")
        return dataclasses.replace(cfg, **changes)

    def estimate(self, cfg: TrainConfig, step_s: float, step: int, elapsed: float, retimed: bool = False) -> TrainConfig:
        """The expected time, measured: a run's first steps say what the rest will take. Timed again
        once the compile decision is made (`retimed`), a budgeted run is fitted again, both ways: a
        compiled step, or a machine that was busy for the first steps, gives it back what it cut."""
        before = cfg.steps
        step_s = self.ddp.broadcast(step_s)  # every rank plans with the same numbers
        per_step = seconds_per_step(cfg, step_s)
        fitted = None if self.budget_s is None else fit_to_budget(cfg, step, elapsed, per_step, self.budget_s,
                                                                   self.full_steps, self.full_interval)
        if fitted is not None:
            cfg = fitted
            self.on_resize(cfg)
            full = self.full_steps
            if cfg.steps == full:
                self.say(f"Timed again at step {step}: all {full:,} steps fit in {duration(self.budget_s)} after all.")
            else:
                self.say(f"{'Timed again: a' if retimed else 'A'}ll {full:,} steps would take about "
                         f"{duration((full - step) * per_step)} here, so this run trains {cfg.steps:,} (about "
                         f"{duration(self.budget_s)}); for the whole schedule pass --steps {full}.")
        elif retimed:
            return cfg  # nothing changed: the first estimate stands
        if cfg.steps > step and (cfg.steps != before or not retimed):  # a run already over has nothing left
            self.say(f"{step_s:.2f} s a step here: about {duration((cfg.steps - step) * per_step)} "
                     f"for the {cfg.steps - step:,} steps left, evaluations included.")
        return cfg
