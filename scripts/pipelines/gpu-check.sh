#!/usr/bin/env bash
# The GPU figures in the README: run on a CUDA machine from the repository root.
#   bash scripts/gpu-check.sh OUT_DIR [CXR_ROOT]
# Runs the GPU-only tests (pytest -m gpu: bf16-mixed, channels_last, compile, CPU/GPU agreement), a 1-device DDP
# fit, benchmarks batch 8 (with torch.compile) and 64 on a large synthetic set, the data and training at 1,000 and
# 4,000 images (bench mode=scale), then trains the baseline recipe on
# the real CXR set for real. Needs the project's dependencies importable (PYTHONPATH=. works).
set -uo pipefail
out=${1:?usage: gpu-check.sh OUT_DIR [CXR_ROOT]}
cxr=${2:-../shared/data/cxr-v7}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
python3 -m pytest -q -m gpu tests 2>&1 | tail -15
python3 -m lungseg.train +experiment=demo trainer=ddp trainer.devices=1 trainer.max_epochs=2 ~callbacks.progress_bar \
    hydra.run.dir="$out/ddp1" 2>&1 | grep -E "test/dice|stopped|error" | tail -5
big=/tmp/lungseg-big
python3 - <<PY
import time; from lungseg.data.sample import write_sample_dataset
t = time.time(); write_sample_dataset("$big", n_train=3072, n_val=64, n_test=64); print(f"sample set: {time.time()-t:.0f} s")
PY
python3 -m lungseg.bench device=cuda batch_size=64 data_root=$big matmul_size=8192 repeats=5 warmup=3 fit_epochs=3 \
    --json "$out/bench_b64.json" 2>&1 | grep -vi warn | tail -22
python3 -m lungseg.bench device=cuda batch_size=8 compile=true data_root=$big matmul_size=8192 repeats=5 warmup=3 \
    fit_epochs=2 --json "$out/bench_b8.json" 2>&1 | grep -vi warn | tail -22
python3 -m lungseg.bench mode=scale device=cuda "scale.sizes=[1000,4000]" batch_size=64 scale.train_steps=50 \
    json="$out/scale.json" 2>&1 | grep -vi warn | tail -6
start=$(date +%s)
python3 -m lungseg.train +experiment=baseline trainer=gpu data.root="$cxr" hydra.run.dir="$out/baseline" \
    ~callbacks.progress_bar 2>&1 | grep -E "test/|Epoch|stopped|best" | tail -20
echo "baseline wall time: $(( $(date +%s) - start )) s"
rm -f "$out"/baseline/checkpoints/*.ckpt
