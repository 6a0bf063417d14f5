"""Export a trained model, a module a format: a transformers folder (hf.py), a GGUF file (gguf.py), or one
self-describing safetensors file; a LoRA run's adapters merged into those, or alone as peft writes them (peft.py).
This front door checks the target and the family, then dispatches."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from bladegpt.checkpoint import read_adapters, read_metadata, save_checkpoint
from bladegpt.config import ModelConfig
from bladegpt.encoding import as_text
from bladegpt.errors import UserError
from bladegpt.export.gguf import DTYPES, exported_by_us, write_gguf
from bladegpt.export.gguf_vocab import adds_tokens, unkept_flags, unstopped
from bladegpt.export.hf import write_hf_model, write_hf_tokenizer
from bladegpt.export.peft import FILES as PEFT_FILES, write_peft
from bladegpt.files import atomic_write, publish_dir, temp_dir
from bladegpt.runs import BEST, LAST, RUN_FILE, STATE, resolve_checkpoint
from bladegpt.sources import load_bladegpt

FORMATS = ("hf", "safetensors", "gguf", "peft")
SUFFIXES = {"safetensors": ".safetensors", "gguf": ".gguf"}
WRITES = {"hf": "a transformers folder", "peft": "a folder of adapters", "safetensors": "a .safetensors file",
          "gguf": "a .gguf file"}
# What an hf export folder holds: --force may replace a folder of these, and nothing else.
HF_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
RUN_CHECKPOINTS = {BEST, LAST, STATE}


def choose_format(out: Path, format: str | None) -> str:
    """`format` where given, else the one OUT's suffix names, else hf. A suffix naming another format than
    `format` is a UserError: `export voice.gguf` wrote a transformers folder called voice.gguf."""
    if format is not None and format not in FORMATS:
        raise UserError(f"Unknown export format '{format}'; choose one of: {', '.join(FORMATS)}.")
    named = next((kind for kind, suffix in SUFFIXES.items() if Path(out).suffix.lower() == suffix), None)
    if format is None or named in (None, format):
        return format or named or "hf"
    raise UserError(f"{out} names {WRITES[named]}, but --format {format} writes {WRITES[format]}; drop --format "
                    f"(the name chooses {named}), or give OUT a name for --format {format}.")


def export(out: Path, checkpoint: Path | None = None, format: str | None = None, force: bool = False,
           dtype: str | None = None, warn: Callable[[str], None] = print) -> Path:
    """Write the checkpoint (default: latest run's best) to `out`; returns what was written.

    `format` defaults to the one OUT's suffix names (.gguf, .safetensors), else hf. `force` replaces only an
    earlier export, never anything else (nor a link). `dtype` is GGUF's (default f16).
    """
    format = choose_format(out, format)
    if dtype is not None and format != "gguf":
        raise UserError("--dtype is for --format gguf; the other formats keep the model's float32 weights.")
    if format == "gguf" and (dtype or "f16") not in DTYPES:
        raise UserError(f"Unknown --dtype '{dtype}'; choose one of: {', '.join(DTYPES)}.")
    source = resolve_checkpoint(checkpoint)
    out = Path(out)
    if format == "peft":
        _check_folder_target(out, source, force, PEFT_FILES)
        read_adapters(source)  # a whole model is one line before any folder is made
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_dir(out, PEFT_FILES)
        try:
            write_peft(tmp, source)
            publish_dir(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out
    if format in SUFFIXES:
        suffix = SUFFIXES[format]
        out = out if out.suffix.lower() == suffix else out.with_name(out.name + suffix)
        ours = exported_by_us if format == "gguf" else _safetensors_export
        _check_file_target(out, source, force, ours)
        model, tokenizer, info = load_bladegpt(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        if format == "gguf":
            check_family(model.config)
            name = as_text(source.parent.name if (source.parent / RUN_FILE).exists() else source.stem)[0]  # GGUF strings are UTF-8
            if adds_tokens(tokenizer) and tokenizer.vocab_size == model.config.vocab_size:
                warn("This model has no spare vocabulary row, so the end-of-text token llama.cpp needs gets a "
                     "zero row: llama.cpp may end a text early now and then (about 2 in 1,000 tokens measured "
                     "on a char model). Models trained by this version always have a spare row.")
            if tokenizer.kind == "hf":
                unkept = unkept_flags(tokenizer)
                if unkept:
                    warn(f"GGUF keeps no lstrip, rstrip, single_word or normalized flag of an added token, so llama.cpp "
                         f"encodes the text around {len(unkept)} of them to other ids than BladeGPT does: "
                         f"{'; '.join(unkept[:5])}{'; ...' if len(unkept) > 5 else ''}.")
            if tokenizer.eot_id is None and tokenizer.kind != "hf":
                warn("This model's tokenizer was saved before BladeGPT read <|endoftext|> as the document separator: "
                     "BladeGPT reads that text as its characters, the GGUF file as its end of text. Prepare the "
                     "text and train again for one meaning everywhere.")
            if dtype in ("q4_0", "q4_1"):
                warn(f"{dtype} rounds each weight to 4 bits, which can cost a small model much of what it learnt "
                     "(a SmolLM2-135M voice fine-tuned on officer_k gave back 0.086 of its 0.093 bpb gain; q8_0 "
                     "cost it 0.002): `bladegpt sample --precision int4` lets you hear it before you export.")
            missed = unstopped(tokenizer)
            if missed:
                warn(f"llama.cpp reads at most three stop ids from a GGUF file and finds others by name only, so "
                     f"it will not stop at {', '.join(f'{i} {tokenizer.decode([i])!r}' for i in missed)}, where "
                     "BladeGPT does; export --format hf "
                     "keeps them all.")
            atomic_write(out, lambda tmp: write_gguf(tmp, model, tokenizer, dtype or "f16", name, as_text(str(source))[0]))
        else:
            save_checkpoint(out, model, tokenizer, **info, exported_from=str(source))
        return out
    _check_folder_target(out, source, force)
    model, tokenizer, info = load_bladegpt(source)
    check_family(model.config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(out, HF_FILES)
    try:
        write_hf_model(tmp, model, tokenizer)
        write_hf_tokenizer(tmp, tokenizer, model.config.context_length or model.config.block_size)
        publish_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def check_family(cfg: ModelConfig) -> None:
    """UserError (one line) for a block no Hugging Face or GGUF family computes: a soft-cap (but Gemma's), ReLU², or
    GPT-2's block with some of the Llama family's parts (`train --block`)."""
    if (cfg.logit_softcap is not None and cfg.arch != "gemma3") or cfg.activation == "relu2":
        part = "caps its logits (softcap)" if cfg.logit_softcap is not None else "uses ReLU² (relu2)"
        raise UserError(f"This model {part}, which no Hugging Face or GGUF model family computes; export --format "
                        "safetensors, or train with --block modern for a model that exports.")
    if cfg.arch == "gpt2" and (cfg.norm, cfg.positions, cfg.activation, cfg.qk_norm) not in (
            ("layernorm", "learned", "gelu", False), ("layernorm", "learned", "gelu_tanh", False)):
        raise UserError("This model's block is part GPT-2's, part the Llama family's (--block), which no Hugging Face "
                        "or GGUF model family computes; export --format safetensors, or train with --block gpt2 or "
                        "modern.")


def _check_folder_target(out: Path, source: Path, force: bool, files: set[str] = HF_FILES) -> None:
    """An export folder is new, empty, or (with --force) an earlier export: never the current folder,
    the run being exported, or a folder holding anything else."""
    _check_not_link(out)
    resolved, run = out.resolve(), source.resolve().parent
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise UserError(f"Cannot export into {out}: it is the current folder or holds it; name a new folder, "
                        "e.g. exports/my-voice.")
    if resolved == source.resolve() or resolved in source.resolve().parents:
        raise UserError(f"Cannot export into {out}: it holds the checkpoint being exported; name another folder.")
    if (run / RUN_FILE).exists() and (resolved == run or run in resolved.parents):
        raise UserError(f"Cannot export into {out}: the checkpoint being exported is in {run}; "
                        "name a folder outside it, e.g. exports/my-voice.")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; name a folder for the Hugging Face export (or use --format safetensors).")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not {p.name for p in out.iterdir()} <= files:
        raise UserError(f"{out} holds files BladeGPT did not export; name another folder (--force replaces "
                        "only an earlier export).")
    if not force:
        raise UserError(f"{out} holds an earlier export; add --force to replace it, or name another folder.")


def _safetensors_export(path: Path) -> bool:
    try:
        return "exported_from" in json.loads(read_metadata(path).get("info", "{}"))
    except (UserError, json.JSONDecodeError):
        return False


def _check_not_link(out: Path) -> None:
    """A link at OUT is the user's: publishing over it would move or replace the link itself."""
    if out.is_symlink():
        raise UserError(f"{out} is a link; name a path of the export's own (export replaces no link).")


def _check_file_target(out: Path, source: Path, force: bool, exported: Callable[[Path], bool]) -> None:
    _check_not_link(out)
    if out.resolve() == source.resolve() or (out.name in RUN_CHECKPOINTS and (out.parent / RUN_FILE).exists()):
        raise UserError(f"Cannot export over {out}: it is a run's own checkpoint; name another file.")
    if out.is_dir():
        raise UserError(f"{out} is a folder; name a {out.suffix} file to write.")
    if not out.exists():
        return
    if not exported(out):
        raise UserError(f"{out} exists and is not an earlier BladeGPT export (it may be a file you keep); name "
                        "another file (--force replaces only an earlier export).")
    if not force:
        raise UserError(f"{out} already exists; add --force to overwrite it.")
