#!/usr/bin/env bash
# One GPU session (an H100/H200, at most ~9 minutes): what only a GPU can tell about the defaults.
#   1. the memory model of method.face_batch_size: auto against the allocator's peak (1-8 faces, 1024 px);
#   2. the UNet loop with the new defaults (bf16, fused LoRA, channels_last), eager and compiled, 1024 px,
#      1/2/4/8 faces per call: seconds per face at N=100/50/25 and MFU on the fused basis.
# Random weights at real size (timings and memory are those of the real models). Needs the repository's
# dependencies (diffusers, peft, transformers) installed or carried as wheels; results go to $OUT
# (default benchmarks/results). Each step has its own time budget, so a slow step cannot eat the session.
#   OUT=/tmp/out bash benchmarks/gpu_session.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
PY=${PYTHON:-python}
mkdir -p "$OUT"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no GPU'; print(torch.cuda.get_device_name(0))"
timeout 150 "$PY" benchmarks/memory_model.py --gpu-check --face-sizes 1024 --out "$OUT/memory_model-gpu-check.json"
timeout 390 "$PY" benchmarks/core_gpu.py --dtypes bfloat16 --fuse-lora on --channels-last on \
    --compile off on --face-sizes 1024 --batches 1 2 4 8 --budget-s 300 --out "$OUT/core_gpu-defaults.json"
