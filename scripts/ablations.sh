#!/usr/bin/env bash
# The val-split comparisons behind +experiment=cxr_small (docs/RESULTS.md, "How the recipe was chosen").
# Every run: seed 42, cxr-v7 train/val, 256 px, best.ckpt = highest val Dice, then lungseg.evaluate on val.
# Overrides are written against the final cxr_small; runs A-D were made in pairs, one thread each.
#   scripts/ablations.sh [CXR_ROOT=../shared/data/cxr-v7] [OUT=outputs/ablate]
set -euo pipefail
CXR=${1:-../shared/data/cxr-v7}
OUT=${2:-outputs/ablate}
PY=${PYTHON:-.venv/bin/python}
BASE=(+experiment=cxr_small data.root="$CXR" trainer.max_epochs=60 test=false '~callbacks.progress_bar')

run() {  # name, then overrides
  local name=$1; shift
  [ -f "$OUT/$name/checkpoints/best.ckpt" ] || "$PY" -m lungseg.train "${BASE[@]}" "$@" hydra.run.dir="$OUT/$name"
  "$PY" -m lungseg.evaluate ckpt_path="$OUT/$name/checkpoints/best.ckpt" data.root="$CXR" split=val calibration=false
}

run A1_keras           loss=bce_dice model.noise_std=0.05 '~callbacks.precise_batchnorm'
run A2_strong          loss=bce_dice model.noise_std=0.05 augment=strong '~callbacks.precise_batchnorm'
run B1_pbn             loss=bce_dice model.noise_std=0.05 augment=strong
run B2_pbn_nonoise     loss=bce_dice augment=strong
run C1_keras           loss=bce_dice
run C2_bce             augment=strong
run D1_full_width_equal_time loss=bce_dice augment=strong model.base_filters=32 trainer.max_epochs=20
run D2_no_l2           loss=bce_dice augment=strong module.kernel_l2=0
# At the recipe's full length (150 epochs), seed 43: the strong augmentation against cxr_small's (the original's),
# which is outputs/results/cxr_small-seed43 (scripts/results.sh).
run E1_strong_150ep_seed43 trainer.max_epochs=150 seed=43 augment=strong
"$PY" -m lungseg.sweep_summary "$OUT"
