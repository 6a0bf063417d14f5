"""A GGUF file of a larger model's shape for decoding benchmarks (issue #42: "on the 1.7B shape"), with no download:
SmolLM2-1.7B's configuration (HuggingFaceTB/SmolLM2-1.7B-Instruct's config.json: 24 layers, width 2,048, 32 heads
and 32 KV heads, MLP 8,192, RoPE base 130,000, vocabulary 49,152, tied head) with random weights (std 0.02), the
tokenizer of a given SmolLM2 GGUF, and that file's ggml types tensor by tensor (SmolLM2-135M-Instruct.Q4_1.gguf:
the blocks' matrices Q4_1, the tied embedding Q8_0, norms F32). Random weights decode at the trained ones' speed
(the same bytes move; greedy text is noise), so llama.cpp and BladeGPT can be timed on it side by side
(scripts/llamacpp_generate.py).

    python scripts/shape_gguf.py SmolLM2-135M-Instruct.Q4_1.gguf OUT.gguf
"""
import sys
from collections import Counter
from pathlib import Path

import gguf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bladegpt.export import gguf as export  # noqa: E402
from bladegpt.model import GPT  # noqa: E402
from bladegpt.sources import load_pretrained  # noqa: E402

SMOLLM2_1_7B = dict(n_layer=24, n_embd=2048, n_head=32, n_kv_head=32, intermediate_size=8192, rope_theta=130000.0,
                    block_size=8192)

src, out = sys.argv[1], Path(sys.argv[2])
types = {t.name if not t.name.startswith("blk.") else t.name.split(".", 2)[2]: t.tensor_type
         for t in gguf.GGUFReader(src).tensors}
pretrained = load_pretrained(src)
cfg = pretrained.model.config
for key, value in SMOLLM2_1_7B.items():
    setattr(cfg, key, value)
torch.manual_seed(0)
model = GPT(cfg)
print(f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters; the file's types: "
      f"{dict(Counter(t.name for t in types.values()))}")
plain = export._encode


def encode_as_source(name: str, tensor: torch.Tensor, dtype: str):
    """The type the source file gives a tensor of this name (per block part), not one type for all."""
    qtype = types[name.split(".", 2)[2] if name.startswith("blk.") else name]
    return plain(name, tensor, qtype.name.lower()) if qtype.name != "F32" else plain(name, tensor, "f32")


export._encode = encode_as_source
export.write_gguf(out, model, pretrained.tokenizer, dtype="q4_1", name="smollm2-1.7b-shape-random")
print(f"wrote {out} ({out.stat().st_size / 1e9:.2f} GB)")
