#!/usr/bin/env bash
# The GPU checks of issue 23 in one call of a lent device (e.g. the `run` tool:
# `OUT=$OUT bash scripts/bench/gpu_checks.sh`, timeout_s 600; about 5-8 min on an H100):
#
# 1. the tests marked `gpu` (CUDA paths equal the CPU's);
# 2. map inference against the read floor, T = 24 (2048², 1024² windows) and T = 70
#    (1024², 256² windows), serial and with 4 reader threads, the default LTAE; and T = 24
#    with the paper's projection (`encoder.temporal_conv=[]`) for the cost of the
#    temporal convolution;
# 3. the training step of i2dl's LTAE against the reference L-TAE, batch 4096, bf16, with
#    a torch.profiler table and trace of each (where the 0.90x of docs/benchmarks.md goes).
#
# Results in $OUT (default outputs/gpu_checks): gpu.txt, pytest_gpu.txt, infer_*.jsonl,
# fit.jsonl, profile/{i2dl,reference}_{ops.txt,trace.json}; the lines of the JSON files
# go into docs/benchmarks.md with the card's name. Each step has its own time limit, so
# one slow step does not take the others' results with it.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-outputs/gpu_checks}
mkdir -p "$OUT"
export PYTHONPATH=.
step() {  # step NAME SECONDS COMMAND... : stdout+stderr to $OUT/NAME, exit status noted
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name" 2>&1
  echo "$name rc=$? $((SECONDS - start))s" | tee -a "$OUT/steps.txt"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
step pytest_gpu.txt 120 python -m pytest -q -m gpu -p no:cacheprovider tests
step infer_t24.jsonl 130 python scripts/bench/bench_infer.py --device cuda --size 2048 \
  --chunk 1024 --repeat 2 --variants serial:lean:auto:0,threads4:lean:auto:4
step infer_t70.jsonl 130 python scripts/bench/bench_infer.py --device cuda --size 1024 \
  --dates 70 --chunk 256 --repeat 1 --variants serial:lean:auto:0,threads4:lean:auto:4
step infer_t24_noconv.jsonl 80 python scripts/bench/bench_infer.py --device cuda --size 2048 \
  --chunk 1024 --repeat 1 --variants threads4:lean:auto:4 --set 'encoder.temporal_conv=[]'
step fit.jsonl 80 python scripts/bench/bench_fit.py --device cuda --steps 50 --batch 4096 \
  --profile "$OUT/profile"
