"""Does llama.cpp run our GGUF export as BladeGPT runs the model? (docs/benchmarks/gguf.md)

Needs llama.cpp's Python binding, built from source (about 5 minutes on 2 cores this way):
    CMAKE_ARGS="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
        -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 pip install llama-cpp-python
Then, for any checkpoint (default: the latest run's best), or any --init-from source (a GGUF file, an HF folder):
    python scripts/gguf_check.py [--checkpoint runs/NAME/best.safetensors | --source FILE.gguf] [--tokens 300]

With --source FILE.gguf it first compares BladeGPT's tokenizer, read from the file, with llama.cpp's own
on the same file (digits included).

It exports f32, f16 and q8_0 files and, for each, compares with BladeGPT:
- token ids for mixed text (punctuation, digits, Unicode, runs of spaces and newlines);
- logits over a prompt: llama.cpp against BladeGPT's model computing the tanh GELU (llama.cpp's),
  and the same against BladeGPT's own exact GELU (what the approximation changes);
- greedy tokens: llama.cpp's against BladeGPT's, both sliding the window the same way.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import numpy as np
import torch

from bladegpt.sources import load_bladegpt
from bladegpt.generate.engine import generate
from bladegpt.export import export
from bladegpt.runs import resolve_checkpoint
from bladegpt.runtime import cpu_model

TEXTS = [
    "The hunter counted the coins.",
    "Numbers 1234567 and 3.14, punctuation!?;: (brackets) [x] {y}",
    "Unicode: café naïve — “quotes” 😀 日本",
    "Whitespace   runs\t\ttabs\n\n\nnewlines   ",
    "'tis don't we'll THEY'RE",
    "  leading spaces",
    "a\r\nb x  \n  y 12,345.678 9999",
    "Wait—what? 'No,' he said.\n\n  Twice.",
]


def tanh_gelu(model):
    model = copy.deepcopy(model)
    for block in model.transformer.h:  # GPT-2's block: llama.cpp computes its GELU with the tanh approximation
        block.mlp.gelu = torch.nn.GELU(approximate="tanh")
    return model.eval()


def encodable(tokenizer, text: str) -> bool:
    try:
        tokenizer.encode(text)
        return True
    except ValueError:  # a char tokenizer refuses characters it never saw
        return False


def llama_greedy(llm, prompt: list[int], n: int, n_own: int, block: int) -> list[int]:
    """Greedy tokens from llama.cpp, over the model's own ids, sliding the window as BladeGPT does
    (when it is full, keep its last half and start again)."""
    tokens, out = list(prompt[-block:]), []
    llm.reset()
    llm.eval(tokens)
    for _ in range(n):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1][:n_own]))
        out.append(token)
        tokens.append(token)
        if llm.n_tokens == block:
            llm.reset()
            llm.eval(tokens[len(tokens) - block // 2:])
        else:
            llm.eval([token])
    return out


def agreement(a: list[int], b: list[int]) -> str:
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    same = sum(x == y for x, y in zip(a, b))
    return f"{same}/{len(a)} equal" + ("" if first is None else f", first difference at {first}")


def main() -> None:
    import llama_cpp

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--source", default=None, help="any --init-from source instead of a checkpoint")
    parser.add_argument("--dtypes", default="f32,f16,q8_0")
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--prompt", default="\n")
    args = parser.parse_args()

    tmpdir = tempfile.TemporaryDirectory()
    if args.source:
        from bladegpt.checkpoint import save_checkpoint
        from bladegpt.sources import gguf_path, load_pretrained

        pretrained = load_pretrained(args.source)
        model, tokenizer = pretrained.model, pretrained.tokenizer
        source = Path(tmpdir.name) / "source.safetensors"
        save_checkpoint(source, model, tokenizer)
        if gguf_path(args.source) is not None:  # the source file's vocabulary, read by both
            llm = llama_cpp.Llama(str(gguf_path(args.source)), vocab_only=True, verbose=False)
            texts = TEXTS + ["In 2024, 3.14159 of 1,000,000 people paid $42.50 at 10:30pm.", "x=12345678 v2.0.1"]
            ok = sum(llm.tokenize(t.encode(), add_bos=False, special=False) == tokenizer.encode(t) for t in texts)
            print(f"{pretrained.description}\n  source file: token ids equal llama.cpp's for {ok}/{len(texts)} texts")
            del llm
    else:
        source = resolve_checkpoint(args.checkpoint)
        model, tokenizer, _ = load_bladegpt(source)
    model.eval()
    same = tanh_gelu(model) if model.config.arch == "gpt2" else model
    cfg, n_own = model.config, tokenizer.vocab_size
    print(f"CPU: {cpu_model()} | llama-cpp-python {llama_cpp.__version__} | {source}")
    print(f"model: {cfg.n_layer} layers, {cfg.n_embd} wide, block {cfg.block_size}, {tokenizer.kind} tokenizer "
          f"({n_own} ids), activation {cfg.activation}")
    prompt = tokenizer.encode(args.prompt)
    ours = list(generate(model, prompt, args.tokens, n_own, temperature=0))
    ours_tanh = ours if same is model else list(generate(same, prompt, args.tokens, n_own, temperature=0))
    window = torch.tensor([(prompt + ours)[: cfg.block_size]])
    # llama.cpp keeps n_ctx x vocabulary logits (Gemma 3's 32,768 x 262,144 would be 34 GB): a context that just holds
    # the prompt and the new tokens slides the same way as the model's whole one, since neither fills it.
    n_ctx = min(cfg.block_size, len(prompt) + args.tokens)
    with torch.no_grad():
        exact, approx = model(window)[0][0, :, :n_own], same(window)[0][0, :, :n_own]
    if cfg.arch == "gpt2":
        print(f"BladeGPT exact GELU vs tanh GELU: largest logit difference {(exact - approx).abs().max():.2e} "
              f"(logits span {exact.min():.1f}..{exact.max():.1f}); greedy {agreement(ours, ours_tanh)}")

    with tmpdir as tmp:
        for dtype in args.dtypes.split(","):
            path = export(Path(tmp) / f"voice-{dtype}.gguf", source, "gguf", dtype=dtype)
            llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False, seed=0)
            texts = [t for t in TEXTS if encodable(tokenizer, t)]
            ids_ok = sum(llm.tokenize(t.encode(), add_bos=False, special=False) == tokenizer.encode(t) for t in texts)
            llm.reset()
            llm.eval(window[0].tolist())
            theirs = torch.tensor(np.array(llm.scores[: window.shape[1], :n_own]))
            greedy = llama_greedy(llm, prompt, args.tokens, n_own, cfg.block_size)
            print(f"{dtype:>5}: {path.stat().st_size / 1e6:6.1f} MB | token ids equal for {ids_ok}/{len(texts)} texts"
                  f" | logits vs tanh-GELU BladeGPT: max {(theirs - approx).abs().max():.2e}, vs exact: max "
                  f"{(theirs - exact).abs().max():.2e} | greedy vs BladeGPT: {agreement(greedy, ours)}; "
                  f"vs tanh-GELU BladeGPT: {agreement(greedy, ours_tanh)}")
            del llm


if __name__ == "__main__":
    main()
