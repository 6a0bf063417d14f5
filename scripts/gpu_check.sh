#!/usr/bin/env bash
# The device check, most wanted first: sampling speed (eager, and the compiled step as a CUDA graph; the cuDNN decode trap), the test suite on CUDA, nanoGPT parity,
# then the bench ladders. Results land in $OUT as each step ends. Usage (from the repo root):
#   scripts/gpu_check.sh [path/to/tinyshakespeare.txt]
set -x
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
SHAKESPEARE=${1:-../shared/data/tinyshakespeare.txt}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
for mode in default nocudnn; do timeout 40 python3 scripts/decode_probe.py $mode; done > "$OUT/decode_probe.txt" 2>&1
timeout 150 python3 -m bladegpt bench --generate --json > "$OUT/generate_mini.json"
timeout 180 python3 -m bladegpt bench --generate --preset gpt2 --json > "$OUT/generate_gpt2.json"
timeout 200 python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tail -30 > "$OUT/pytest_cuda.txt"
timeout 150 python3 scripts/parity.py "$SHAKESPEARE" > "$OUT/parity.txt" 2>&1
timeout 120 python3 -m bladegpt bench --json > "$OUT/bench_mini.json"
timeout 240 python3 -m bladegpt bench --preset gpt2 --steps 10 --json > "$OUT/bench_gpt2.json"
