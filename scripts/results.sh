#!/usr/bin/env bash
# Reproduces the result tables of docs/results.md: for each dataset and model, iota2's
# `runs` (RUNS=5 runs, seeds 0..4, each with its own polygon split) into
# $OUT/<dataset>/<model>/ (seed_<i>/ run folders, RESULTS.txt, results.json), the wall time
# of the 5 runs in $OUT/walltimes.txt, a comparison of the models per dataset
# ($OUT/<dataset>/comparison.md) and a summary table on stdout ($OUT/summary.md).
#
#   bash scripts/results.sh                      # 4 tables x rf ltae tempcnn tempcnn_ensemble, 5 runs each (hours)
#   QUICK=1 bash scripts/results.sh              # smoke test: 1 run, 2 epochs, 20 trees (minutes)
#   DATASETS=ucr_crop MODELS="rf ltae" bash scripts/results.sh
#   DATASETS="formosat2_crops slovenia_s2_ndvi" MODELS="rf svm extra_trees mlp ann ltae ssa tempcnn" \
#     bash scripts/results.sh                    # the two older tables of docs/results.md
#
# Environment: OUT (default outputs/results; QUICK: outputs/results_quick), DATASETS, MODELS,
# RUNS (default 5; QUICK: 1), EPOCHS (overrides trainer.max_epochs; QUICK: 2), EXTRA (more
# Hydra overrides for every run), OMP_NUM_THREADS (default 1, see below).
set -uo pipefail
cd "$(dirname "$0")/.."

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
  OUT=${OUT:-outputs/results_quick}; RUNS=${RUNS:-1}; EPOCHS=${EPOCHS:-2}
else
  OUT=${OUT:-outputs/results}; RUNS=${RUNS:-5}; EPOCHS=${EPOCHS:-}
fi
DATASETS=${DATASETS:-"ucr_crop campo_verde_mod13q1 sits_matogrosso_mod13q1 formosat2_crops"}
# ltae_ensemble / tempcnn_ensemble: 5 networks of that model, probabilities averaged
MODELS=${MODELS:-"rf ltae tempcnn tempcnn_ensemble"}
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
# One intra-op thread: on the 2-core development machine (shared with other jobs), two
# OpenMP threads made LTAE training 3-8x slower (docs in the datamodule speed report);
# set OMP_NUM_THREADS=2 (or more) on a dedicated many-core machine.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

mkdir -p "$OUT"
failed=()
for ds in $DATASETS; do
  # per-dataset training settings, chosen before any result: about 15-25 batches per epoch,
  # up to 100 epochs with early stopping on the selection split (patience 10)
  epochs=100
  case $ds in
    ucr_crop) data=(data=$ds datamodule.batch_size=256) ;;                 # 4320 learn px
    campo_verde_mod13q1) data=(data=$ds datamodule.batch_size=128) ;;      # ~3200 learn px
    sits_matogrosso_mod13q1) data=(data=$ds datamodule.batch_size=64) ;;   # ~900 learn px
    formosat2_crops) data=(data=$ds datamodule.batch_size=32) ;;           # ~150 learn px
    slovenia_s2_ndvi) data=(data=$ds); epochs=30 ;;                        # the defaults
    *) echo "unknown dataset $ds (known: ucr_crop campo_verde_mod13q1 sits_matogrosso_mod13q1 formosat2_crops slovenia_s2_ndvi)" >&2; exit 2 ;;
  esac
  dirs=()
  for model in $MODELS; do
    dir="$OUT/$ds/$model"
    args=("+experiment=$model" "${data[@]}" "trainer.max_epochs=${EPOCHS:-$epochs}"
          "runs=$RUNS" "hydra.run.dir=$dir" trainer.enable_progress_bar=false)
    [[ $QUICK == 1 && $model =~ ^(rf|extra_trees)$ ]] && args+=(model.estimator.n_estimators=20)
    args+=("${EXTRA_ARGS[@]}")
    rm -rf "$dir"
    echo "== $ds $model: python -m i2dl train ${args[*]}"
    start=$(date +%s)
    if ! python -m i2dl train "${args[@]}" > "$OUT/$ds.$model.log" 2>&1; then
      echo "   FAILED, see $OUT/$ds.$model.log" >&2
      failed+=("$ds/$model")
      continue
    fi
    echo "$ds $model $(( $(date +%s) - start ))" | tee -a "$OUT/walltimes.txt"
    # a single run writes no RESULTS.txt: aggregate it the same way
    if [[ ! -f $dir/results.json ]]; then
      python -m i2dl report "$dir" > /dev/null || failed+=("$ds/$model (report)")
    fi
    dirs+=("$dir")
  done
  if (( ${#dirs[@]} > 1 )); then
    python -m i2dl report "${dirs[@]}" --out "$OUT/$ds" > /dev/null || failed+=("$ds (comparison)")
  fi
done

MODELS="$MODELS" python - "$OUT" $DATASETS <<'PY' | tee "$OUT/summary.md"
import json, os, sys
from pathlib import Path

out, datasets, models = Path(sys.argv[1]), sys.argv[2:], os.environ["MODELS"].split()
walls = {}
if (out / "walltimes.txt").is_file():
    for line in (out / "walltimes.txt").read_text().split("\n"):
        if line.strip():
            ds, model, sec = line.split()
            walls[(ds, model)] = sec  # the last measurement of each pair
def cell(m):
    if m is None or m.get("mean") is None:
        return "n/a"
    return f"{m['mean']:.3f}" + (f" ± {m['std']:.3f}" if m.get("std") is not None else "")
for ds in datasets:
    print(f"\n### {ds}\n")
    print("| model | runs | OA | kappa | macro F1 | wall time, all runs (s) |")
    print("|---|---:|---|---|---|---:|")
    for model in models:
        d = out / ds / model
        if not (d / "results.json").is_file():
            print(f"| {model} | 0 | failed | | | |")
            continue
        res = json.loads((d / "results.json").read_text())
        m = res.get("metrics", {})
        cells = " | ".join(cell(m.get(k)) for k in ("oa", "kappa", "f1_macro"))
        print(f"| {d.name} | {res.get('n_runs', '?')} | {cells} | {walls.get((ds, d.name), '')} |")
PY

if (( ${#failed[@]} )); then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
