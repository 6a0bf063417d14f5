"""Why GPU sampling can crawl: ms per one-token decode step over 100 new lengths, then the same again.

Usage: python scripts/decode_probe.py default|nocudnn   (needs a CUDA GPU; one mode per process,
since cuDNN keeps the graphs it built for the life of the process)

`default` leaves PyTorch's attention backends as they are (cuDNN first on recent NVIDIA GPUs);
`nocudnn` restricts them the way bladegpt/engine.py does for generation.
"""

import statistics
import sys
import time
from contextlib import nullcontext

import torch
from torch.nn.attention import sdpa_kernel

from bladegpt.config import from_preset
from bladegpt.generate.engine import DECODE_BACKENDS, KVCache
from bladegpt.model import GPT

mode = sys.argv[1] if len(sys.argv) > 1 else "default"
backends = nullcontext() if mode == "default" else sdpa_kernel(DECODE_BACKENDS)
cfg, _ = from_preset("mini")
cfg.vocab_size = 4096
model = GPT(cfg).cuda().eval()
token = torch.zeros(1, 1, dtype=torch.long, device="cuda")
with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16), backends:
    model(torch.zeros(1, 8, dtype=torch.long, device="cuda"))  # warm-up at a length the loop never meets
    for label in ("new lengths", "same again"):
        cache, times = KVCache(cfg.n_layer, cfg.block_size), []
        for _ in range(100):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            cache.seat(1, token.device)
            model(token, kv_cache=cache)
            cache.advance(1)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1e3)
        print(f"{mode:8s} {label}: median {statistics.median(times):.2f} ms/token, total {sum(times):.0f} ms", flush=True)
