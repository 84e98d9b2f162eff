#!/usr/bin/env bash
# On a CUDA machine: the CUDA-only tests, then the GPU benchmark of the configuration
# (bf16 autocast, 6 layers x 512, 16K tokens per step, window 512). Results go to OUTDIR.
#
#     bash scripts/run_cuda_checks.sh OUTDIR [LENGTHS] [MODELS]
set -uo pipefail
out=${1:?usage: run_cuda_checks.sh OUTDIR [LENGTHS] [MODELS]}
lengths=${2:-1024,4096,16384,65536}
models=${3:-dense,hf-longformer,longctx-longformer}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python -c "import torch, transformers
print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee -a "$out/gpu.txt"
python -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/test_cuda.log" \
  | tail -25
python scripts/benchmark.py --device cuda --dtype bf16 --lengths "$lengths" --models "$models" \
  --warmup_steps 2 --steps 5 --no_progress --output "$out/benchmark_cuda.json" 2>&1 \
  | tee "$out/benchmark_cuda.log"
