"""`bladegpt export`: a checkpoint handed to transformers, llama.cpp or peft, and how to load what was written."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from bladegpt.cli.app import CheckpointOpt, app, console, friendly

@app.command()
@friendly
def export(
    out: Annotated[Path, typer.Argument(help="Folder (hf, peft), or .safetensors or .gguf file to write.")],
    checkpoint: CheckpointOpt = None,
    format: Annotated[Optional[str], typer.Option("--format", help="hf (a transformers folder), safetensors (one file), "
                                        "gguf (llama.cpp, ollama, LM Studio), or peft (a LoRA run's adapters alone); "
                                        "a LoRA run's adapters are merged into the others "
                                        "\\[default: gguf or safetensors where OUT ends so, else hf].")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="GGUF weights: f32, f16, bf16, q8_0, q4_0 or q4_1 \\[default: f16].")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier export at OUT.")] = False,
) -> None:
    """Hand a trained model to the rest of the ecosystem (transformers, llama.cpp, or one file)."""
    from bladegpt.export import choose_format, export as export_model

    format = choose_format(out, format)
    written = export_model(out, checkpoint, format, force, dtype,
                           warn=lambda line: console.print(line, style="yellow", soft_wrap=True))
    quoted = shlex.quote(str(written))  # the commands below are pasted into a shell; nothing here is markup
    if format == "hf":
        console.print(f"Wrote {written}/. Load it with:\n"
                      f"  AutoModelForCausalLM.from_pretrained({str(written)!r}), AutoTokenizer.from_pretrained({str(written)!r})",
                      soft_wrap=True, markup=False)
    elif format == "peft":
        console.print(f"Wrote {written}/ (adapter_model.safetensors, adapter_config.json). Load it onto its base with:\n"
                      f"  PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), {str(written)!r}); "
                      f"for llama.cpp: convert_lora_to_gguf.py {quoted} --base BASE_FOLDER", soft_wrap=True, markup=False)
    elif format == "gguf":
        # a voice continues text: llama-cli and ollama would wrap a prompt in the file's chat template
        console.print(f"Wrote {written}. Continue a text with llama.cpp:  llama-completion -m {quoted} -no-cnv "
                      f"-p \"Your prompt\"\nor ollama: a Modelfile with `FROM ./{written.name}`, "
                      f"`TEMPLATE \"\"\"{{{{ .Prompt }}}}\"\"\"` and the voice's stop tokens (docs/export.md, "
                      f"\"A Modelfile for ollama\"), then  ollama create my-voice -f Modelfile",
                      soft_wrap=True, markup=False)
    else:
        console.print(f"Wrote {written}. Sample from it with: bladegpt sample --checkpoint {quoted}", soft_wrap=True,
                      markup=False)
