#!/usr/bin/env bash
# Run by Snakemake inside the freshly created conda env (see envs/pdiff.yaml), from the workflow's
# working directory. PDIFF_SOURCE overrides where the pdiff source tree is (default: the repo root,
# i.e. the working directory of a normal `snakemake` run).
set -euo pipefail
src="${PDIFF_SOURCE:-.}"
if [ ! -f "$src/pyproject.toml" ]; then
    echo "pdiff post-deploy: no pyproject.toml in '$src'; run snakemake from the repo root or set PDIFF_SOURCE" >&2
    exit 1
fi
python -m pip install --no-deps --no-build-isolation -e "$src"
