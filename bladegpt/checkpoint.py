"""safetensors checkpoints: model weights with their config and tokenizer, and the training state.

Nothing here unpickles: a checkpoint file can hold tensors and strings, never code.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from bladegpt import __version__, strictjson
from bladegpt.config import ModelConfig
from bladegpt.encoding import openable
from bladegpt.errors import CheckpointError, TokenizerError
from bladegpt.files import atomic_write, commit, is_gguf, stage, stage_link, temp_path
from bladegpt.model import GPT
from bladegpt.runs import BEST, LAST, STATE
from bladegpt.tensorfile import save_tensors
from bladegpt.tokenizer import Tokenizer, tokenizer_from_dict
from bladegpt.lora import LoraConfig, adapter_state, load_adapters

FORMAT = "bladegpt-1"


def save_checkpoint(path: Path, model: GPT, tokenizer: Tokenizer, **info) -> None:
    """Weights plus config and tokenizer as metadata, written atomically; the tied wte/lm_head is stored once."""
    atomic_write(path, _checkpoint_writer(model, tokenizer, info))


def best_stager(run_dir: Path, model: GPT | None = None, tokenizer: Tokenizer | None = None,
                staging: dict[str, torch.Tensor] | None = None, **info):
    """The function(last's staged copy) -> path that stages best.safetensors in a training save's commit
    (training_snapshot's `best`). With no model, best is last: a link to its staged copy. With one (its weights
    as best holds them: an average applied), a copy of it now, into `staging` (see _staged), written later;
    with no `staging`, written here and now, from the live tensors, before they change."""
    if model is None:
        return lambda last: stage_link(last, run_dir / BEST)
    write = _checkpoint_writer(model, tokenizer, info, staging)
    if staging is None:
        staged = stage(run_dir / BEST, write)
        return lambda last: staged
    return lambda last: stage(run_dir / BEST, write)


def _checkpoint_writer(model: GPT, tokenizer: Tokenizer, info: dict, staging: dict[str, torch.Tensor] | None = None):
    metadata = {
        "format": FORMAT,
        "bladegpt_version": __version__,
        "config": strictjson.dumps(model.config.to_dict()),
        "tokenizer": strictjson.dumps(tokenizer.to_dict(), ensure_ascii=False),
        "info": strictjson.dumps(info),
    }
    lora = getattr(model, "lora", None)
    if lora is not None:  # a LoRA run: its adapters and where its base is, not the base's weights
        metadata["lora"] = strictjson.dumps(lora.to_dict())
        tensors = adapter_state(model)
    else:
        tensors = _stored_once(model.state_dict(), metadata)
    if staging is not None:
        tensors = _staged(tensors, staging)
    return lambda tmp: _io(save_tensors, tensors, tmp, metadata=metadata)


def _staged(tensors: dict[str, torch.Tensor], staging: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors copied into CPU buffers of the same names in `staging`, made at the first save and reused by
    the next ones (torch.distributed.checkpoint's async_save caches its staging buffers too: fresh 1.6 GB
    costs ~5x the copy in page faults). The caller has finished writing the previous copy."""
    copies = {}
    for name, t in tensors.items():
        buffer = staging.get(name)
        if buffer is None or buffer.shape != t.shape or buffer.dtype != t.dtype:
            buffer = staging[name] = torch.empty(t.shape, dtype=t.dtype)
        copies[name] = buffer.copy_(t.detach())
    return copies


def _stored_once(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, torch.Tensor]:
    """The state with each tensor shared by several names (the tied wte/lm_head) stored once, as safetensors'
    save_model stores it: under the first of its names in sorted order, each other name pointing to it in the
    metadata (safetensors refuses shared tensors)."""
    kept: dict[tuple, str] = {}
    tensors = {}
    for name in sorted(state):
        t = state[name].detach()
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key in kept:
            metadata.setdefault(name, kept[key])
            continue
        kept[key] = name
        tensors[name] = t.contiguous()
    return {name: tensors[name] for name in state if name in tensors}


def _io(save, *args, **kwargs) -> None:
    """safetensors reports a failed write (a full disk) as its own error: raise it as the OSError it is."""
    try:
        save(*args, **kwargs)
    except SafetensorError as e:
        raise OSError(errno.EIO, str(e).removeprefix("Error while serializing: "), args[1]) from None


def read_metadata(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}; train a model first with `bladegpt train`.")
    if is_gguf(path):
        raise CheckpointError(f"{path} is a GGUF file, not a BladeGPT checkpoint; start a run from it with `bladegpt "
                              f"train --init-from {path}`, or give a run folder or .safetensors checkpoint.")
    try:
        with openable(path) as name, safe_open(name, framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        damaged = path.suffix == ".safetensors"  # named as one: a damaged checkpoint; else not a model file at all
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({e}); it may be truncated or damaged. {_instead(path)}"
            if damaged else
            f"{path} is not a model file BladeGPT reads (a BladeGPT .safetensors checkpoint, a .gguf file, a run "
            "folder, or a Hugging Face model folder); check the path."
        ) from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a BladeGPT checkpoint (no '{FORMAT}' metadata).")
    return metadata


def _instead(path: Path) -> str:
    """The fix for a damaged run file: the run's other checkpoint where it is another file (the hint named
    last.safetensors even when that was the damaged one, under --resume too)."""
    others = [path.with_name(name) for name in (BEST, LAST) if name != path.name and path.name in (BEST, LAST, STATE)]
    other = next((p for p in others if p.is_file() and not os.path.samefile(p, path) and _reads(p)), None)
    if other is None:
        return "Use another checkpoint, or train again."
    quoted = shlex.quote(str(other))
    return (f"Use {other}: `bladegpt sample --checkpoint {quoted}`, or a new run from it with "
            f"`bladegpt train --init-from {quoted}`" + (" (this run cannot be resumed)." if path.name != BEST else "."))


def _reads(path: Path) -> bool:
    try:
        with openable(path) as name, safe_open(name, framework="pt"):
            return True
    except (SafetensorError, OSError, ValueError):
        return False


def load_checkpoint(path: Path, attention: str = "sdpa") -> tuple[GPT, Tokenizer, dict]:
    """The model (on CPU, eval mode), its tokenizer, and the info saved with it. A LoRA checkpoint holds no
    whole model: sources.load_bladegpt finds its base again (any source) and merges the adapters in."""
    metadata = read_metadata(path)
    if "lora" in metadata:
        raise CheckpointError(f"{path} holds LoRA adapters, not a whole model; load it with its base "
                              "(bladegpt sample, export, or train --init-from it).")
    try:
        config = ModelConfig.from_dict(json.loads(metadata["config"]))
        tokenizer = tokenizer_from_dict(json.loads(metadata["tokenizer"]))
        _check_shape(config, path)  # before building: a config claiming 10^6 layers would take minutes
        model = GPT(config, attention=attention)
        with openable(path) as name:
            model.load_state_dict(_untie(load_file(name), config))  # strict: names and shapes must match
    except (SafetensorError, KeyError, TypeError, json.JSONDecodeError, TokenizerError, RuntimeError) as e:
        raise CheckpointError(f"{path} is damaged ({e}); use another checkpoint or train again.") from None
    info = json.loads(metadata.get("info", "{}"))
    model.eval()
    return model, tokenizer, info


def read_adapters(path: Path, metadata: dict | None = None):
    """A LoRA checkpoint's parts, without its base: (LoraConfig, ModelConfig, tokenizer, adapter tensors by
    BladeGPT's names, info). A checkpoint of a whole model is a CheckpointError."""
    metadata = read_metadata(path) if metadata is None else metadata
    if "lora" not in metadata:
        raise CheckpointError(f"{path} holds a whole model, not LoRA adapters; train adapters with `bladegpt train "
                              "--init-from SOURCE --lora`, or export this model with --format hf or gguf.")
    try:
        lora = LoraConfig.from_dict(json.loads(metadata["lora"]))
        config = ModelConfig.from_dict(json.loads(metadata["config"]))
        tokenizer = tokenizer_from_dict(json.loads(metadata["tokenizer"]))
        with openable(path) as name:
            tensors = load_file(name)
    except (SafetensorError, KeyError, TypeError, ValueError, TokenizerError) as e:
        raise CheckpointError(f"{path} is damaged ({e}); use another checkpoint or train again.") from None
    return lora, config, tokenizer, tensors, json.loads(metadata.get("info", "{}"))


def restore_adapters(model: GPT, path: Path) -> dict:
    """Copy a LoRA checkpoint's adapters into a model adapted the same way (a resume); returns its info."""
    lora, _, _, tensors, info = read_adapters(path)
    if lora != model.lora:
        raise CheckpointError(f"{path}'s adapters ({lora.describe()}) are not this run's; resume the run they "
                              "belong to, or start a new one.")
    try:
        load_adapters(model, tensors)
    except RuntimeError as e:
        raise CheckpointError(f"{path} is damaged ({e}); use another checkpoint or start a new run.") from None
    return info


def _check_shape(config: ModelConfig, path: Path) -> None:
    """The config's shape must be the stored tensors' shape (cheap: reads the header only)."""
    with openable(path) as name, safe_open(name, framework="pt") as f:
        shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    embedding = shapes.get("transformer.wte.weight") or shapes.get("lm_head.weight")
    layers = {int(m.group(1)) for name in shapes if (m := re.match(r"transformer\.h\.(\d+)\.", name))}
    found = (len(layers), embedding, shapes.get("transformer.wpe.weight"))
    positions = (config.block_size, config.n_embd) if config.positions == "learned" else None
    claimed = (config.n_layer, (config.vocab_size, config.n_embd), positions)
    if found != claimed:
        raise RuntimeError(f"its config says {config.n_layer} layers, vocabulary {config.vocab_size}, "
                           f"{config.n_embd} wide, block {config.block_size}, but its tensors disagree")


def _untie(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """safetensors keeps one name of a tied pair; give the tensor to both names."""
    if not config.tie_embeddings:
        return state
    wte, head = "transformer.wte.weight", "lm_head.weight"
    if head in state and wte not in state:
        state[wte] = state[head]
    elif wte in state and head not in state:
        state[head] = state[wte]
    return state


def save_training(run_dir: Path, model: GPT, tokenizer: Tokenizer, optimizers: list[torch.optim.Optimizer],
                  tensors: dict[str, torch.Tensor], info: dict) -> None:
    """last.safetensors and state.safetensors as one commit: both are staged whole first, and the
    rename of state is the commit point. A crash before it keeps the previous pair; a crash after
    it leaves last's staged copy complete, and `recover_training` moves it into place."""
    _commit_training(run_dir, *_training_writers(model, tokenizer, optimizers, tensors, info))


def training_snapshot(run_dir: Path, model: GPT, tokenizer: Tokenizer, optimizers: list[torch.optim.Optimizer],
                      tensors: dict[str, torch.Tensor], info: dict, staging: dict[str, dict[str, torch.Tensor]] | None,
                      best=None):
    """A copy of what save_training writes, taken now (into staging["state"] and staging["last"], see _staged),
    and the function() that writes it as save_training does, later (from a background thread, while the
    weights and moments go on changing); with no `staging`, no copy: it writes the live tensors, so it must run
    before they change. `best` (best_stager's) stages best.safetensors in the same commit."""
    writers = _training_writers(model, tokenizer, optimizers, tensors, info, staging)
    return lambda: _commit_training(run_dir, *writers, best)


def _training_writers(model, tokenizer, optimizers, tensors, info, staging: dict | None = None):
    state, last = (None, None) if staging is None else (staging.setdefault("state", {}), staging.setdefault("last", {}))
    return (_state_writer(optimizers, tensors, info, state),
            _checkpoint_writer(model, tokenizer, {"step": info["step"], "val_loss": info["best_val"]}, last))


def _commit_training(run_dir: Path, state_writer, last_writer, best=None) -> None:
    """Stage state, last and (where given) best whole, then rename them in that order: state's rename is the
    commit point, after which `recover_training` finishes the others from their staged copies."""
    names = (STATE, LAST, BEST)
    try:
        staged = [stage(run_dir / STATE, state_writer), stage(run_dir / LAST, last_writer)]
        if best is not None:
            staged.append(best(staged[1]))
    except BaseException:
        for name in names:
            temp_path(run_dir / name).unlink(missing_ok=True)
        raise
    for tmp, name in zip(staged, names):
        commit(tmp, run_dir / name)


def recover_training(run_dir: Path) -> None:
    """Finish a save that a crash cut after its commit point (last's and best's staged copies of state's step
    are moved into place), or drop an unfinished one (every staged copy of another step, and state's own)."""
    try:
        committed = _step(run_dir / STATE)
    except CheckpointError:
        committed = None  # no state, or an unreadable one: nothing staged was committed
    for name in (LAST, BEST):
        staged = temp_path(run_dir / name)
        if staged.is_symlink() or not staged.is_file():
            continue  # nothing, or not ours (a link, a folder): files.stage refuses to write through it
        try:
            same = committed is not None and _step(staged) == committed
        except CheckpointError:
            same = False  # cut short while it was staged
        if same:
            commit(staged, run_dir / name)
        else:
            staged.unlink()
    if not (staged := temp_path(run_dir / STATE)).is_symlink() and staged.is_file():
        staged.unlink()  # staged, never renamed: the crash came before the commit


def _step(path: Path) -> int | None:
    return read_info(path).get("step")


def read_info(path: Path) -> dict:
    """The `info` saved with a checkpoint or training state (step, best val loss, runtime, ...)."""
    try:
        return json.loads(read_metadata(path).get("info", "{}"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is damaged ({e}); use another checkpoint or start a new run.") from None


def _state_writer(optimizers: list[torch.optim.Optimizer], tensors: dict[str, torch.Tensor], info: dict,
                  staging: dict[str, torch.Tensor] | None = None):
    """Optimizer moments, RNG states and counters: what an exact resume needs beyond the weights (copied
    now into `staging` where given: the optimizer updates its moments in place)."""
    states = [optimizer.state_dict() for optimizer in optimizers]
    flat = {f"opt{i}.{idx}.{name}": t.detach()
            for i, opt in enumerate(states) for idx, s in opt["state"].items() for name, t in s.items()}
    flat.update(tensors)
    flat = {name: t.cpu().contiguous() for name, t in flat.items()} if staging is None else _staged(flat, staging)
    metadata = {"format": FORMAT, "param_groups": strictjson.dumps([opt["param_groups"] for opt in states]),
                "info": strictjson.dumps(info)}
    return lambda tmp: _io(save_tensors, flat, tmp, metadata=metadata)


def load_train_state(path: Path) -> tuple[list[dict], dict[str, torch.Tensor], dict]:
    """(one state_dict per optimizer, other tensors, info) as saved by save_training."""
    metadata = read_metadata(path)
    try:
        with openable(path) as name:
            flat = load_file(name)
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is damaged ({e}); start a new run.") from None
    groups = json.loads(metadata["param_groups"])
    if groups and isinstance(groups[0], dict):  # saved before runs could have two optimizers
        groups = [groups]
    opts = [{"state": {}, "param_groups": g} for g in groups]
    tensors = {}
    for name, t in flat.items():
        if name.startswith("opt"):
            which, idx, key = name.split(".", 2)
            opts[int(which[3:] or 0)]["state"].setdefault(int(idx), {})[key] = t
        else:
            tensors[name] = t
    return opts, tensors, json.loads(metadata["info"])
