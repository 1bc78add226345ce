#!/usr/bin/env bash
# Every GPU measurement the project asks for, in one call on one CUDA GPU (about 6 minutes on
# one H200; no GPU has run this version yet). Output: $OUT/device_check.txt (everything printed,
# each step's exit status and seconds, a summary at the end) and the cost plan's throughput
# files $OUT/throughputs-amp.json and $OUT/throughputs-fp32.json (results/benchmarks/ when
# $OUT is unset). A failing step does not stop the later ones; the script exits 1 if any failed.
#
# Steps, in order of value (what each measures; expected time on an H200):
#  1. throughputs, amp  `pdiff plan-cost --measure-only` on config/benchmark.yaml (ViT-B/16,
#                       random weights, bf16 towers as shipped): the cost model's per-unit rates
#                       and memory, written for `cost.throughputs` / `--throughputs` (~30 s)
#  2. throughputs, fp32 the same with `backbone.amp: false` (an overlay written to a temp dir)
#                       (~30 s)
#  3. pair budget, fp32 benchmarks/pair_budget.py --device cuda: ViT-B/16 text tower at
#                       ImageNet's 1,000 names, CoOp; peak device memory (max_memory_allocated)
#                       and pairs/s of an evaluation batch (64 images) and an overfitting step
#                       (8 images) with and without compute.max_pairs, bucketed vs padded class
#                       texts, and the per-rule memory estimate of config/benchmark.yaml (~40 s)
#  4. pair budget, amp  the same under the backbone's bf16 autocast (~30 s)
#  5. amp agreement     benchmarks/amp_agreement.py --device cuda: CUDA bf16 autocast vs fp32
#                       (TF32 off) on the shipped pdiff-tiny (1,024 demo-world images) and a
#                       random ViT-B/16 over 1,000 names (256 images): logits, top-1 agreement,
#                       accuracy, 5 overfitting steps of 8 images, time ratio (~60 s)
#  6-7. batched overfit benchmarks/batched_overfit.py: 64 per-sample prompts at once vs one at a
#                       time, pdiff-tiny then ViT-B-16 (~20 s, ~90 s)
#  8-9. diffusion eval  benchmarks/diffusion_eval.py: evaluation with prompt diffusion vs the
#                       baseline, pdiff-tiny then ViT-B-16 (~20 s, ~40 s)
# 10. cost plan         `pdiff plan-cost --throughputs $OUT/throughputs-amp.json`: hours per rule
#                       of config/benchmark.yaml from the measured file; needs Snakemake (its dry
#                       run), which the GPU machine may lack: then run the same command anywhere
#                       on the returned file (~30 s)
# 11. CPU DiT step      benchmarks/dit_step.py on the machine's CPU (1 thread): the demo's DiT
#                       step on another processor than the development machine's; the header
#                       records whether it has AVX-512 (~20 s)
# Each step also runs under `timeout` (STEP_LIMIT seconds, default 150), so one hang costs at
# most that. tests/test_device_check.py parses every `step` line's arguments on a CPU.
#
# On a machine without open_clip and no network, carry it as wheels (from the repo root, where
# pip works; `.whl/` is git-ignored):
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 -d .whl \
#     open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
# and name `.whl` in the call's carry; this script installs them to /tmp/site when .whl/ exists.
# Steps 1-9 need nothing else beyond what a PyTorch image has (pyyaml, h5py, pandas,
# torchdiffeq, safetensors, matplotlib); step 10 needs Snakemake and its dependencies too.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
cd "$(dirname "$0")/.."  # the repository root: the paths below are relative to it
out=${OUT:-results/benchmarks}
mkdir -p "$out"
python=${PYTHON:-python3}
limit=${STEP_LIMIT:-150}
if [ -d .whl ]; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# the fp32 overlay of step 2 (plan-cost merges config files in order; it has no --config)
fp32=$(mktemp -d)/fp32.yaml
printf 'backbone:\n  amp: false\n' >"$fp32"

summary=()
failed=0
# step NAME ARGS...: "$python ARGS", its exit status and seconds recorded; never stops the script
step() {
  local name=$1 t0=$SECONDS rc=0
  shift
  echo
  echo "=== $name: python $* ==="
  timeout "$limit" "$python" "$@" || rc=$?
  echo "=== $name: exit $rc after $((SECONDS - t0)) s ==="
  summary+=("$(printf '%-22s exit %3d %5d s' "$name" "$rc" "$((SECONDS - t0))")")
  [ "$rc" -eq 0 ] || failed=1
}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  git log -1 --format='commit %h %s' 2>/dev/null || true
  grep -m1 'model name' /proc/cpuinfo || true
  echo "cpu flags with avx512: $(grep -o 'avx512[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  "$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 1
  for module in open_clip snakemake; do
    "$python" -c "import $module" 2>/dev/null && echo "$module: yes" || echo "$module: MISSING"
  done

  step "1 throughputs amp" -m pdiff.cli plan-cost --configfile config/benchmark.yaml --measure-only --device cuda --out "$out/throughputs-amp.json"
  step "2 throughputs fp32" -m pdiff.cli plan-cost --configfile config/benchmark.yaml "$fp32" --measure-only --device cuda --out "$out/throughputs-fp32.json"
  step "3 pair budget fp32" benchmarks/pair_budget.py --device cuda --eval-images 64 --overfit-images 8 --max-pairs 2048 --rounds 5
  step "4 pair budget amp" benchmarks/pair_budget.py --device cuda --amp --eval-images 64 --overfit-images 8 --max-pairs 2048 --rounds 5
  step "5 amp agreement" benchmarks/amp_agreement.py --device cuda --tiny-images 1024 --vit-images 256 --overfit-images 8 --overfit-steps 5
  step "6 batched tiny" benchmarks/batched_overfit.py --device cuda --model pdiff-tiny --rounds 3
  step "7 batched ViT-B-16" benchmarks/batched_overfit.py --device cuda --model ViT-B-16 --rounds 2
  step "8 diffusion tiny" benchmarks/diffusion_eval.py --device cuda --model pdiff-tiny --rounds 3
  step "9 diffusion ViT-B-16" benchmarks/diffusion_eval.py --device cuda --model ViT-B-16 --rounds 3
  step "10 cost plan" -m pdiff.cli plan-cost --configfile config/benchmark.yaml --throughputs "$out/throughputs-amp.json"
  step "11 cpu dit step" benchmarks/dit_step.py --rounds 3 --steps 20

  echo
  echo "=== summary ==="
  printf '%s\n' "${summary[@]}"
  exit "$failed"
} 2>&1 | tee "$out/device_check.txt"
