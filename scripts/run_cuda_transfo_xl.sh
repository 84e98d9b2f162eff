#!/usr/bin/env bash
# Issue 5's GPU figures in one call (a device session has 10 minutes a command):
# 1. training cost per token of Transformer-XL, with and without memory, against the dense encoder
#    at the same span (bf16, the benchmark's GPU size, 6 x 512), through each relative attention
#    kernel: "auto" (SDPA with the position mask on CUDA) and "blocks" (linear memory; untimed on a
#    GPU when this script was written);
# 2. evaluation with memory against the vanilla recomputation at attention length 3,800 (the paper's
#    1,874x), random weights of the 2 x 256 CPU model, on a Gutenberg book.
#
#     bash scripts/run_cuda_transfo_xl.sh OUTDIR [BOOK] [LENGTHS]
#
# DEVICE=cpu with short LENGTHS and SEGMENT/MEMORY/TOKENS runs the same commands on a CPU, to
# check them.
set -euo pipefail
out=${1:?usage: run_cuda_transfo_xl.sh OUTDIR [BOOK] [LENGTHS]}
book=${2:-../shared/data/books/austen-sense.txt}
lengths=${3:-1024,4096,16384}
device=${DEVICE:-cuda}
segment=${SEGMENT:-200}   # attention length = memory + segment = 3,800
memory=${MEMORY:-3600}
tokens=${TOKENS:-2048}    # tokens scored both ways
mkdir -p "$out"
export PYTHONUNBUFFERED=1
dtype=$([ "$device" = cuda ] && echo bf16 || echo fp32)
python scripts/benchmark.py --device "$device" --dtype "$dtype" --lengths "$lengths" \
  --models dense,longctx-transfo-xl,longctx-transfo-xl-memory --baseline dense \
  --warmup_steps 2 --steps 5 \
  --no_optimizer_step --no_progress --output "$out/benchmark_transfo_xl_memory.json" 2>&1 \
  | tee "$out/benchmark_transfo_xl_memory.log"
python scripts/benchmark.py --device "$device" --dtype "$dtype" --lengths "$lengths" \
  --models dense,longctx-transfo-xl,longctx-transfo-xl-memory --baseline dense \
  --warmup_steps 2 --steps 5 \
  --no_optimizer_step --no_progress --model_config relative_attention_kernel=blocks \
  --output "$out/benchmark_transfo_xl_memory_blocks.json" 2>&1 \
  | tee "$out/benchmark_transfo_xl_memory_blocks.log"
size="hidden_size=256,num_hidden_layers=2,num_attention_heads=4,intermediate_size=1024"
python scripts/run_lm.py --model_type longctx-transfo-xl --config_overrides \
  "$size,mem_len=$memory,cutoffs=[]" \
  --validation_file "$book" --max_eval_chars 20000 --max_seq_length "$segment" --do_eval \
  --per_device_eval_batch_size 8 --recompute_comparison_tokens "$tokens" --report_to none --seed 0 \
  $([ "$device" = cpu ] && echo --use_cpu) \
  --output_dir "$out/xl-recompute-$((memory + segment))" 2>&1 \
  | tee "$out/xl-recompute-$((memory + segment)).log"
grep -h "recompute_slowdown\|comparison_perplexity\|comparison_context" \
  "$out"/xl-recompute-*/all_results.json
