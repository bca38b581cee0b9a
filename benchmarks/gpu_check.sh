#!/usr/bin/env bash
# The GPU checks of benchmarks/gpu_check.py, as run on a CUDA machine from the repo root:
#   OUT=benchmarks/results bash benchmarks/gpu_check.sh
# (no MLflow needed there: library calls only). Writes gpu_*.json and logs to $OUT.
set -uo pipefail
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_nvidia_smi.csv"
python3 -m benchmarks.gpu_check single --out "$out/gpu_single.json" --epochs "${EPOCHS:-60}" 2>&1 | tail -40 > "$out/gpu_single.log"
python3 -m torch.distributed.run --standalone --nproc-per-node 1 -m benchmarks.gpu_check nccl \
  --out "$out/gpu_nccl.json" --epochs "${EPOCHS:-60}" 2>&1 | tail -40 > "$out/gpu_nccl.log"
for log in "$out"/gpu_*.log; do tail -n 5 "$log"; done
