"""Does llama.cpp read `export --format peft`? Outside CI, where llama.cpp's Python scripts are at hand.

    pip download --no-deps --no-binary :all: llama-cpp-python   # its sdist vendors llama.cpp (or any llama.cpp checkout)
    python scripts/lora_llamacpp_check.py --llama-cpp llama_cpp_python-X/vendor/llama.cpp --work /tmp/lora-check

A tiny random SmolLM2-like model (a Hugging Face folder) is fine-tuned with --lora --lora-base-dtype fp32 for 20
steps; its adapters are exported with --format peft and converted by llama.cpp's convert_lora_to_gguf.py against
the folder; llama.cpp (llama-cpp-python) then runs base.gguf + adapter.gguf, and BladeGPT's merged GGUF export,
beside BladeGPT's merged model. Needs transformers and llama-cpp-python.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-cpp", type=Path, required=True, help="a llama.cpp folder holding convert_lora_to_gguf.py")
    parser.add_argument("--work", type=Path, default=Path("lora-check"))
    args = parser.parse_args()
    import llama_cpp
    import numpy as np
    import torch

    from bladegpt.sources import load_bladegpt
    from bladegpt.export import export
    from bladegpt.train import train
    from bladegpt.lora import LoraConfig
    from bladegpt.data.prepare import prepare
    from tests.conftest import corpus_text
    from tests.families import tiny_family, write_gguf
    from tests.test_hf_tokenizer import add_vocabulary, build_folder

    converter = args.llama_cpp.resolve() / "convert_lora_to_gguf.py"
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    os.chdir(args.work)
    base = build_folder(Path("tiny-smollm").resolve(), "smollm")
    words = max(json.loads((base / "tokenizer.json").read_text())["model"]["vocab"].values()) + 1
    source = tiny_family("llama-gqa-tied", vocab=(words + 63) // 64 * 64)
    source.save_pretrained(base)
    Path("tales.txt").write_text(corpus_text())
    prepare([Path("tales.txt")], tokenizer_from=str(base))
    run = train(None, None, {"block_size": 16}, dict(steps=20, batch_size=4, eval_interval=10, eval_iters=2,
                                                     sample_tokens=0),
                init_from=str(base), lora=LoraConfig(base_dtype="fp32", dropout=0.0), device="cpu", precision="fp32",
                compile="off")
    checkpoint = run.run_dir / "best.safetensors"
    export(Path("adapter"), checkpoint, "peft")
    export(Path("merged.gguf"), checkpoint, "gguf", dtype="f32")
    write_gguf(source, Path("base.gguf"),
               tokenizer=lambda w: add_vocabulary(w, base, "smollm", pads=source.config.vocab_size - words, add_bos=False))
    command = [sys.executable, str(converter), "adapter", "--base", str(base), "--outfile", "adapter.gguf",
               "--outtype", "f32"]
    print("$", " ".join(command))
    converted = subprocess.run(command, capture_output=True, text=True)
    print((converted.stderr.strip().splitlines() or ["(no output)"])[-1])
    if converted.returncode != 0:
        sys.exit(f"convert_lora_to_gguf.py failed:\n{converted.stderr}")
    model, tokenizer, _ = load_bladegpt(checkpoint)
    ids = tokenizer.encode("The hunter counted the coins before dawn.")
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0][0].float().numpy()

    def llama_logits(path: str, lora: str | None = None) -> np.ndarray:
        llm = llama_cpp.Llama(path, lora_path=lora, n_ctx=16, n_batch=16, logits_all=True, verbose=False)
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])[:, : ours.shape[1]]

    print(f"llama-cpp-python {llama_cpp.__version__}; {len(ids)} tokens; BladeGPT's logits span "
          f"{ours.min():.2f}..{ours.max():.2f}")
    for what, theirs in (("base.gguf + adapter.gguf", llama_logits("base.gguf", "adapter.gguf")),
                         ("merged.gguf (export --format gguf --dtype f32)", llama_logits("merged.gguf")),
                         ("base.gguf alone (what the adapters change)", llama_logits("base.gguf"))):
        print(f"llama.cpp {what} vs BladeGPT's merged model: max |logit diff| {np.abs(theirs - ours).max():.2e}")


if __name__ == "__main__":
    main()
