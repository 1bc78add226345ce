#!/usr/bin/env bash
# The GPU measurements of the fast-path issue, in one short call (a few minutes on one GPU).
#
# The CPU numbers in docs/performance.md come from the same scripts with their
# defaults; this runs the two whose ratio depends on the hardware (batched overfitting, the cost
# of prompt diffusion at evaluation) on CUDA, at the demo's sizes and on a ViT-B-16, and writes
# everything to $OUT/device_check.txt (results/benchmarks/ when $OUT is unset).
#
# On a machine without open_clip and no network, carry it as wheels first (from the repo root,
# where pip works):
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 -d .whl \
#     open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
# (`.whl/` is git-ignored); this script installs them to /tmp/site when .whl/ exists.
set -euo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
out=${OUT:-results/benchmarks}
mkdir -p "$out"
python=${PYTHON:-python3}
if [ -d .whl ]; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
"$python" -c "import open_clip, torch; assert torch.cuda.is_available(), 'no CUDA device'"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  "$python" -c "import torch; print('torch', torch.__version__)"
  for model in pdiff-tiny ViT-B-16; do
    "$python" benchmarks/batched_overfit.py --device cuda --model "$model" --rounds 3
    "$python" benchmarks/diffusion_eval.py --device cuda --model "$model" --rounds 3
  done
} 2>&1 | tee "$out/device_check.txt"
