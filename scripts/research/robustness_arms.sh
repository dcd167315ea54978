#!/usr/bin/env bash
# Research script, not a pipeline: produced the robustness before/after arms in docs/RESULTS.md at commit 3e03194; kept to reproduce or extend them.
# augment=keras (cxr_small as it was) against augment=robust, 3 seeds each, at 128 px for 60
# epochs (a 2-core budget), scored with the robustness benchmark on val (choices) and test (reported once).
#   scripts/research/robustness_arms.sh [CXR_ROOT=../shared/data/cxr-v7] [OUT=outputs/robust-arms]
# About 15 min a run alone on 2 cores. Arms' names: before (augment=keras), after (augment=robust); each scored
# by the network alone (polarity=as_read) and, as <arm>-polarity, with lungseg.predict's polarity check.
# (The "before" models of docs/RESULTS.md were trained by lungseg 0.2, whose intensity rule was minmax; trained
# now, "before" uses the window rule, so the comparison then isolates the augmentation.)
set -euo pipefail
CXR=${1:-../shared/data/cxr-v7}
OUT=${2:-outputs/robust-arms}
PY=${PYTHON:-.venv/bin/python}
SEEDS=${SEEDS:-"1 2 3"}
COMMON=(+experiment=cxr_small data.image_size=128 trainer.max_epochs=60 "data.root=$CXR" '~callbacks.progress_bar')

arm() {  # name, then train overrides
  local name=$1; shift
  for seed in $SEEDS; do
    local dir=$OUT/$name-s$seed
    [ -f "$dir/checkpoints/best.ckpt" ] || "$PY" -m lungseg.train "${COMMON[@]}" seed="$seed" "$@" hydra.run.dir="$dir"
    for split in val test; do  # the network alone, then as lungseg.predict runs it (the polarity check)
      "$PY" -m lungseg.robustness ckpt_path="$dir/checkpoints/best.ckpt" data.root="$CXR" split=$split \
        polarity=as_read output_dir="$dir/robustness-$split"
      "$PY" -m lungseg.robustness ckpt_path="$dir/checkpoints/best.ckpt" data.root="$CXR" split=$split \
        polarity=auto output_dir="$OUT/$name-polarity-s$seed/robustness-$split"
    done
  done
}

arm before augment=keras
arm after augment=robust
"$PY" scripts/research/robustness_table.py "$OUT" before before-polarity after after-polarity
