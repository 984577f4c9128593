#!/usr/bin/env bash
# Polygon-grouped 5-fold cross-validation of one training recipe on the four labelled
# training tables of ../shared/data (never their held-out test splits): the evidence for
# the defaults of docs/results.md ("Defaults from the field").
#
#   bash scripts/cv_defaults.sh NAME EXPERIMENT [hydra overrides ...]
#   bash scripts/cv_defaults.sh ltae_mlp ltae '+model.encoder.input_mlp=[32,64,128]'
#   bash scripts/cv_defaults.sh rf rf
#
# Each table runs `python -m i2dl train +experiment=EXPERIMENT data=TABLE kfold=5 ...` into
# $OUT/NAME/TABLE (fold_<i>/ run folders, results.json: mean +- std over the folds) with the
# batch sizes of scripts/results.sh; one line per table goes to $OUT/cv.txt.
# Environment: OUT (default outputs/cv), TABLES, EPOCHS (default 100), OMP_NUM_THREADS (1).
set -uo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: cv_defaults.sh NAME EXPERIMENT [overrides]}; model=${2:?experiment}; shift 2
OUT=${OUT:-outputs/cv}
TABLES=${TABLES:-"sits_matogrosso_mod13q1 formosat2_crops campo_verde_mod13q1 ucr_crop"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
for ds in $TABLES; do
  case $ds in
    ucr_crop) bs=256 ;; campo_verde_mod13q1) bs=128 ;;
    sits_matogrosso_mod13q1) bs=64 ;; formosat2_crops) bs=32 ;;
    *) echo "unknown table $ds" >&2; exit 2 ;;
  esac
  dir=$OUT/$name/$ds
  if [[ -f $dir/results.json ]]; then continue; fi
  start=$(date +%s)
  python -m i2dl train "+experiment=$model" "data=$ds" "datamodule.batch_size=$bs" \
    "trainer.max_epochs=${EPOCHS:-100}" kfold=5 "hydra.run.dir=$dir" \
    trainer.enable_progress_bar=false trainer.enable_model_summary=false cpu_threads=1 "$@" \
    > "$OUT/$name.$ds.log" 2>&1
  rc=$?
  python - "$dir" "$name" "$ds" "$rc" "$(( $(date +%s) - start ))" <<'PY' | tee -a "$OUT/cv.txt"
import json, sys
from pathlib import Path
d, name, ds, rc, sec = sys.argv[1:]
try:
    m = json.loads((Path(d) / "results.json").read_text())["metrics"]
    cells = " ".join(f"{k} {m[k]['mean']:.4f}±{m[k]['std']:.4f}" for k in ("oa", "kappa", "f1_macro"))
except (OSError, KeyError, ValueError):
    cells = "failed"
print(f"{name} {ds} rc={rc} {sec}s {cells}")
PY
done
