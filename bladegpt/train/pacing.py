"""How long a run will take, and what that decides: whether compiling pays, whether the default run
fits its time budget. Pure arithmetic on measured step times; the trainer says what was decided."""

from __future__ import annotations

from bladegpt.config import TrainConfig

MIN_EVAL_INTERVAL = 10  # a from-scratch run (or one cut to its time budget) evaluates at most every 10 steps

# First-compile cost we assume before deciding to compile (measured: 25-30 s on a 2-core CPU).
COMPILE_COST_S = {"cpu": 30.0, "cuda": 45.0}
# The step-time saving we count on from compiling; measured ~1.2x on CPU, so be conservative.
COMPILE_GAIN = 0.15


def plural(n: int, noun: str) -> str:
    """'1 step', '2 steps': a count in words a person would write."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


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
                  full_interval: int) -> bool:
    """Set the schedule's length so the run ends within `budget_s`, never past `full_steps` (its
    length before any cut), in place, and its evaluation interval so that the cut run evaluates as often
    as the plan did (`full_interval` over `full_steps`); False when it stays as it is."""
    steps = min(full_steps, max(step + 1, step + int((budget_s - elapsed) / per_step)))
    if steps == cfg.steps:
        return False
    cfg.steps = steps
    cfg.eval_interval = eval_interval(steps, full_steps, full_interval)
    return True


def eval_interval(steps: int, full_steps: int, full_interval: int) -> int:
    """The interval that gives `steps` the evaluations `full_interval` gave `full_steps`: the plan's own
    for the whole schedule; in a cut one never shorter than MIN_EVAL_INTERVAL steps (or the plan's own,
    if that is shorter: a fine-tune's few long steps)."""
    if steps >= full_steps:
        return full_interval
    evaluations = max(1, full_steps // full_interval)
    return max(min(full_interval, MIN_EVAL_INTERVAL), steps // evaluations)
