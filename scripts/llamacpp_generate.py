"""The rows of `bladegpt bench --generate --init-from FILE.gguf` that compare with llama.cpp, alone (the whole bench
times every precision, transformers and a compile, which ran past 35 minutes on a loaded 2-core CPU): BladeGPT as
`sample` ships it (its auto precision) at 1 and 8 samples, llama.cpp (llama-cpp-python) at 1, as bench_generate
runs them (its functions, its prompt draw, greedy for 1, top-k 200 for 8), the contenders alternating; medians.

    OMP_NUM_THREADS=1 python scripts/llamacpp_generate.py SmolLM2-135M-Instruct.Q4_1.gguf 100 5   # file, tokens, repeats
"""
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
from bladegpt import bench as b
from bladegpt.generate.engine import generate_batch
from bladegpt.generate.sampler import decode_precision, in_precision
from bladegpt.runtime import device_name

src, new_tokens, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
dev = torch.device("cpu")
torch.manual_seed(0)
model = b.source_model(src, b.FINETUNE_BLOCK).eval()
vocab = model.config.vocab_size
prompt = torch.randint(0, vocab, (4,)).tolist()
chosen = decode_precision(model, dev)
weights, context = in_precision(model, chosen, cast=True)
llama, kind, why = b.llama_cpp_peer(src, prompt, new_tokens)

def ours(n):
    settings = dict(temperature=0) if n == 1 else dict(temperature=0.8, top_k=200)
    gens = [torch.Generator(dev).manual_seed(i) for i in range(n)]
    with context:
        return [t for t in generate_batch(weights, prompt, new_tokens, vocab, gens, **settings)]

runs = {f"BladeGPT ({chosen}), 1 sample": lambda: ours(1), f"BladeGPT ({chosen}), 8 samples": lambda: ours(8),
        f"llama.cpp ({kind}), 1 sample": llama}
greedy_ours = [int(t) for t in ours(1)]
greedy_llama = llama()
for fn in runs.values():
    fn()
times = {k: [] for k in runs}
for _ in range(repeats):
    for k, fn in runs.items():
        t0 = time.perf_counter(); fn(); times[k].append(time.perf_counter() - t0)
out = {"device": device_name(dev), "torch": torch.__version__, "new_tokens": new_tokens, "repeats": repeats,
       "same_greedy_tokens": sum(a == c for a, c in zip(greedy_ours, greedy_llama)),
       "rows": {k: (8 if "8 samples" in k else 1) * new_tokens / statistics.median(t) for k, t in times.items()},
       "raw_s": times}
print(json.dumps(out, indent=1))
