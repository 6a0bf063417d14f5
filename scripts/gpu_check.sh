#!/usr/bin/env bash
# The device check: bench ladders and a short CUDA training run, results into $OUT.
set -x
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
timeout 200 python3 -m bladegpt bench --json > "$OUT/bench_mini.json"
timeout 300 python3 -m bladegpt bench --preset gpt2 --steps 10 --json > "$OUT/bench_gpt2.json"
timeout 60 python3 -m bladegpt bench --generate --json > "$OUT/generate_mini.json"
cat bladegpt/*.py README.md > /tmp/corpus.txt
cd /tmp && python3 -m bladegpt prepare /tmp/corpus.txt --tokenizer char && \
  timeout 120 python3 -m bladegpt train --steps 300 --eval-interval 100 2>&1 | tail -25 | tee "$OUT/train.txt"
