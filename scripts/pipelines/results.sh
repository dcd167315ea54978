#!/usr/bin/env bash
# Reproduce docs/RESULTS.md on a 2-core CPU: the tuned recipe (3 seeds) and the original recipe on cxr-v7,
# each evaluated once on the test split and run through lungseg.predict at native resolution.
#   scripts/pipelines/results.sh [CXR_ROOT=../shared/data/cxr-v7] [OUT=outputs/results]
set -euo pipefail
CXR=${1:-../shared/data/cxr-v7}
OUT=${2:-outputs/results}
PY=${PYTHON:-.venv/bin/python}
SEEDS=${SEEDS:-"42 43 44"}

run() {  # name, then train overrides
  local name=$1; shift
  local dir=$OUT/$name
  if [ ! -f "$dir/checkpoints/best.ckpt" ]; then
    "$PY" -m lungseg.train "$@" data.root="$CXR" hydra.run.dir="$dir" \
      '~callbacks.progress_bar'
  fi
  "$PY" -m lungseg.evaluate ckpt_path="$dir/checkpoints/best.ckpt" data.root="$CXR" split=test
  "$PY" -m lungseg.predict ckpt_path="$dir/checkpoints/best.ckpt" input="$CXR/orig/test/image" \
    truth="$CXR/orig/test/mask" output="$dir/predict-native" overwrite=true progress=false
}

for seed in $SEEDS; do
  run "cxr_small-seed$seed" +experiment=cxr_small seed="$seed"
done
run baseline +experiment=baseline
# the recipe before deep supervision (the comparison that adopted it), same seeds
for seed in $SEEDS; do
  run "cxr_small-no-deep-supervision-seed$seed" +experiment=cxr_small seed="$seed" model.deep_supervision=false
done
"$PY" scripts/pipelines/results_table.py "$OUT"/cxr_small-seed* "$OUT"/baseline "$OUT"/cxr_small-no-deep-supervision-seed*
