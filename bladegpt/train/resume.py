"""--resume: the run's own settings read back and checked against this resume's flags, its state restored
and verified, and what the resume changed recorded in run.json and said in one line."""

from __future__ import annotations

import math
from pathlib import Path

from bladegpt import runs
from bladegpt.checkpoint import load_checkpoint, load_train_state, read_info, restore_adapters
from bladegpt.config import ModelConfig, TrainConfig
from bladegpt.data.dataset import TokenData
from bladegpt.errors import ConfigError, DataError, UserError
from bladegpt.lora import LoraConfig, attach
from bladegpt.sources import load_lora_base
from bladegpt.train.optim import lr_at, schedule_progress
from bladegpt.train.distributed import Distributed
from bladegpt.train.pacing import duration
from bladegpt.train.plan import RUNTIME_FLAGS, Plan, check_context_weight
from bladegpt.train.trainer import Reporter, Trainer


def resume_plan(run, data, model_overrides, train_overrides, requested) -> Plan:
    """A resumed run's plan: its own model, data and settings from run.json, this resume's flags checked
    against them (the ones that would change what its state means are refused, one line each)."""
    if any(v is not None for v in (model_overrides or {}).values()):
        raise ConfigError("--resume continues a run with its own model shape; drop the model flags or start a new run.")
    try:
        run_dir = Path(run) if run is not None else runs.latest_run()
    except UserError:
        raise UserError(f"Nothing to resume: no run in {runs.RUNS_DIR}/ has a checkpoint yet; start one with "
                        "`bladegpt train` (or name another with --run).") from None
    saved = runs.read_run(run_dir)
    if not (run_dir / runs.STATE).is_file():
        raise ConfigError(f"{run_dir} has no checkpoint to resume (it stopped before its first save); "
                          f"start a new run, in this folder with "
                          f"`{Distributed.from_env().command(['train', '--run', str(run_dir)])}`.")
    state = read_info(run_dir / runs.STATE)
    given = {k: v for k, v in (train_overrides or {}).items() if v is not None}
    try:
        model_cfg = ModelConfig.from_dict(saved["model"])
        saved_train = TrainConfig.from_dict(saved["train"])
        train_cfg = TrainConfig.from_dict({**saved["train"], **given})
    except TypeError as e:
        raise ConfigError(f"{run_dir / runs.RUN_FILE} has settings this version cannot read ({e}); "
                          "start a new run.") from None
    if given.get("seed", saved_train.seed) != saved_train.seed:
        raise ConfigError(f"--resume continues {run_dir}'s own random streams (seed {saved_train.seed}); drop --seed, "
                          "or start a new run with it.")
    for name, what in (("ema", "its evaluations and best checkpoint measure"), ("sampling", "its windows follow"),
                       ("optimizer", "its saved optimizer state belongs to")):
        if given.get(name, getattr(saved_train, name)) != getattr(saved_train, name):
            flag = f"--{name} {getattr(saved_train, name)}"
            raise ConfigError(f"--resume keeps {run_dir}'s {flag}, which {what}; drop --{name}, or start a new run "
                              "with it.")
    recorded = saved.get("dataset_fingerprint")
    if data is not None and not recorded:
        raise ConfigError(f"{run_dir} records no fingerprint of its data to check --data against; drop --data, or "
                          "start a new run on it.")
    data_dir = Path(data if data is not None else saved["dataset"])  # --data: the run's own, moved
    try:
        token_data = TokenData(data_dir)
    except DataError as e:
        if data is not None:
            raise
        again = Distributed.from_env().command(["train", "--resume", "--run", str(run_dir), "--data", "NEW"])
        raise DataError(f"The dataset {run_dir} trained on cannot be used: {e} If it moved, name its new folder: "
                        f"`{again}`.") from None
    if recorded and recorded != token_data.fingerprint:
        why = "it holds other tokens" if data is not None else "it was prepared again since"
        raise DataError(f"{data_dir} is not the data {run_dir} trained on ({why}); "
                        "resuming would continue on other text: start a new run on it instead.")
    check_context_weight(token_data, given)
    if token_data.tokenizer.vocab_size > model_cfg.vocab_size:  # the model is the run's own (GPT-2's is unpadded)
        raise DataError(f"{data_dir}'s vocabulary no longer fits {run_dir}'s model; start a new run on it.")
    saved_runtime = state.get("runtime", {})
    runtime = {k: requested[k] or saved_runtime.get(k) or "auto" for k in RUNTIME_FLAGS}
    model = None
    if saved.get("lora"):  # the base again, checked against its fingerprint, with adapters to restore into
        lora = LoraConfig.from_dict(saved["lora"])
        model = attach(load_lora_base(lora, model_cfg, str(run_dir)), lora)
    return Plan(model_cfg, train_cfg, token_data, runtime, run_dir, saved_runtime, saved_train=saved_train,
                model=model)


def load_run_state(trainer: Trainer) -> None:
    """The run's last checkpoint and training state, read back, checked against each other and against this
    run, and loaded into the trainer."""
    last, state_file = trainer.run_dir / runs.LAST, trainer.run_dir / runs.STATE
    if getattr(trainer.model, "lora", None) is not None:
        weights, info = None, restore_adapters(trainer.model, last)
    else:
        model, _, info = load_checkpoint(last)
        weights = model.state_dict()
    opt_states, tensors, state = load_train_state(state_file)
    if info.get("step") != state["step"]:
        raise ConfigError(f"{trainer.run_dir} has checkpoint and state from different steps; start a new run.")
    if len(opt_states) != len(trainer.optimizers):
        raise ConfigError(f"{trainer.run_dir}'s state holds {len(opt_states)} optimizers, this run has "
                          f"{len(trainer.optimizers)}; resume with the run's own settings or start a new run.")
    trainer.load_state_dict(weights, opt_states, tensors, state)


def restore(trainer: Trainer, plan: Plan, requested: dict, reporter: Reporter) -> None:
    """The trainer continues the run: its state loaded, metrics past its step cut, a changed runtime flag said,
    and a run that already finished (or stopped early) refused in one line naming how to go on."""
    load_run_state(trainer)
    if trainer.ddp.main:
        runs.cut_metrics(plan.run_dir, trainer.step)
    used = trainer.runtime_record()
    for flag in RUNTIME_FLAGS:
        before = plan.saved_runtime.get(flag)
        if requested[flag] is not None and before is not None and used[flag] != before and before != "auto":
            reporter.message(f"Resuming with --{flag} {used[flag]} where the run used {before}: "
                             "the loss will not follow exactly the curve of an uninterrupted run.")
    if trainer.done():
        cfg = trainer.cfg
        if trainer.early.stop:
            raise UserError(f"{plan.run_dir} stopped early at step {trainer.step} (val loss had not improved for "
                            f"{trainer.early.stale_evals} evaluations); pass a larger --patience, or --patience 0, to continue it.")
        more = ("a longer --time (a run trained by the clock ends by the clock; --steps does not extend it)"
                if cfg.time_budget_s is not None else "a larger --steps")
        raise UserError(f"{plan.run_dir} already finished at step {trainer.step}; pass {more} to continue it.")


def record_resume(trainer: Trainer, plan: Plan, reporter: Reporter) -> None:
    """Settings a resume changed go into run.json (atomically), with the step they changed at, so that
    run.json, `runs` and the display agree with what was done; one line says what changed."""
    changes = resume_changes(plan.saved_train, trainer.cfg)
    saved = runs.read_run(plan.run_dir)
    folder = str(plan.data.folder.resolve())
    if not changes and folder == saved["dataset"]:
        return
    record = {**saved, "dataset": folder}  # a dataset moved (resume --data) is found there from now on
    if changes:
        earlier = saved.get("resumes") if isinstance(saved.get("resumes"), list) else []
        record.update(train=trainer.cfg.to_dict(), resumes=[*earlier, {"step": trainer.step, "changed": changes}])
    runs.write_run(plan.run_dir, record)
    if folder != saved["dataset"]:
        reporter.message(f"Resuming on {plan.data.folder}, the same tokens {saved['dataset']} held "
                         "(recorded in run.json).")
    if changes:
        reporter.message(describe_resume(plan.saved_train, trainer.cfg, trainer.step, trainer.elapsed))


def resume_changes(before: TrainConfig, after: TrainConfig) -> dict[str, list]:
    """The settings a resume changed: {name: [before, after]}, as run.json records them."""
    old, new = before.to_dict(), after.to_dict()
    return {name: [old[name], new[name]] for name in old if old[name] != new[name]}


def _shown(name: str, value) -> str:
    if name == "time_budget_s":
        return duration(value) if value is not None else "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def describe_resume(before: TrainConfig, after: TrainConfig, step: int, elapsed: float) -> str:
    """One line: what a resume at `step` changed and what that does to the learning-rate schedule.

    The cosine is a function of the step and the planned length (as nanoGPT's get_lr), so it is planned
    again over the new settings: a longer run's lr climbs back up the curve. The line gives the lr the
    last step used and the one the next step will, so the jump is never a surprise.
    """
    changes = resume_changes(before, after)
    flags = ", ".join(f"--{'time' if k == 'time_budget_s' else k.replace('_', '-')} {_shown(k, new)} (was {_shown(k, old)})"
                      for k, (old, new) in changes.items())
    last = lr_at(step - 1, before, schedule_progress(before, step - 1, elapsed)) if step else before.lr
    planned = lr_at(step, before, schedule_progress(before, step, elapsed))
    following = lr_at(step, after, schedule_progress(after, step, elapsed))
    # another length plans the whole cosine again, even where the next step's lr happens to be the same
    # (a run extended while still warming up)
    if before.steps == after.steps and math.isclose(planned, following, rel_tol=1e-9):
        effect = "the learning-rate schedule is unchanged"
    else:
        effect = (f"the learning-rate schedule is planned again over the new settings, so the lr goes from "
                  f"{last:.2e} at step {step} to {following:.2e} at step {step + 1}")
    return f"Resuming at step {step} with {flags}: {effect} (recorded in run.json)."
