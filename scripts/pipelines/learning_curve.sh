#!/usr/bin/env bash
# How cxr_small's accuracy grows with the number of training images (docs/RESULTS.md, "Learning curve"):
# the recipe trained on 15, 30, 45 and all 60 cxr-v7 training images (data.train_subset, one fixed nested draw),
# every run with the same number of optimizer steps as the full recipe (150 epochs of 60 images = 1,200 steps)
# and about the same number of validations; then lungseg.evaluate on val and on test, and the table.
# The test split is scored as a diagnostic of the trend, not to choose anything.
#   scripts/pipelines/learning_curve.sh [CXR_ROOT=../shared/data/cxr-v7] [OUT=outputs/learning_curve] [train overrides...]
#   SIZES="15 30 45 60" SEEDS="42" scripts/pipelines/learning_curve.sh     (about 16 min a run alone on 2 cores)
set -euo pipefail
CXR=${1:-../shared/data/cxr-v7}
OUT=${2:-outputs/learning_curve}
PY=${PYTHON:-.venv/bin/python}
SIZES=${SIZES:-"15 30 45 60"}
SEEDS=${SEEDS:-42}
FULL=60  # training images in cxr-v7
EXTRA=("${@:3}")  # e.g. threads=1, to run two of these side by side

runs=()
for seed in $SEEDS; do
  for n in $SIZES; do
    dir=$OUT/n$n-seed$seed
    runs+=("$dir")
    epochs=$((150 * FULL / n))                         # the same images seen (and steps, at batch 8) for every n
    every=$(( FULL % n == 0 ? FULL / n : 1 ))          # validate about 150 times whatever n
    [ -f "$dir/checkpoints/best.ckpt" ] || "$PY" -m lungseg.train +experiment=cxr_small data.root="$CXR" \
      seed="$seed" data.train_subset="$n" trainer.max_epochs="$epochs" trainer.check_val_every_n_epoch="$every" \
      test=false '~callbacks.progress_bar' hydra.run.dir="$dir" ${EXTRA[@]+"${EXTRA[@]}"}
    for split in val test; do
      "$PY" -m lungseg.evaluate ckpt_path="$dir/checkpoints/best.ckpt" data.root="$CXR" split=$split calibration=false
    done
  done
done
"$PY" scripts/pipelines/learning_curve_table.py "${runs[@]}"
