#!/usr/bin/env bash
# Reproduces docs/results.md: 5 seeds (each its own polygon split) x every experiment on
# the Formosat-2 pixel table and on the Slovenia example, then the comparison reports.
#   bash scripts/results.sh                 # everything (about an hour on 2 CPU cores)
#   EXPS="ltae rf" DATASETS=formosat2 bash scripts/results.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/results}
EXPS=${EXPS:-"rf svm extra_trees mlp ann ltae ssa tempcnn"}
DATASETS=${DATASETS:-"formosat2 slovenia"}
SEEDS=${SEEDS:-0,1,2,3,4}
mkdir -p "$OUT"
for ds in $DATASETS; do
  case $ds in
    # 189 learn pixels: smaller batches and more epochs than the Slovenia default
    formosat2) extra=(data=formosat2_crops datamodule.batch_size=32 trainer.max_epochs=100) ;;
    slovenia) extra=() ;;
    *) echo "unknown dataset $ds" >&2; exit 2 ;;
  esac
  for exp in $EXPS; do
    start=$(date +%s)
    python -m i2dl train -m "+experiment=$exp" "${extra[@]}" "seed=$SEEDS" \
      "hydra.sweep.dir=$OUT/$ds/$exp" trainer.enable_progress_bar=false \
      > "$OUT/$ds.$exp.log" 2>&1
    echo "$ds $exp $(( $(date +%s) - start ))" | tee -a "$OUT/walltimes.txt"
  done
  python -m i2dl report $(for e in $EXPS; do echo "$OUT/$ds/$e"; done) --out "$OUT/$ds"
done
