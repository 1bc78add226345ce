# `make demo` runs the quick demo end to end (config/quick.yaml: a lighter cut of the embedded
# demo for a first run), `make demo-full` the whole embedded demo (config/config.yaml), `make
# claims` the README's results (seeds 2-4 of the quick demo on two worlds, then the docs);
# `make test` runs the whole test suite
# (what CI runs, through .ci/run). `make test-quick`, for development, leaves out the slow tests,
# those marked `workflow` (Snakemake running jobs) or `slurm` (pyproject.toml's markers); it keeps
# the `dryrun` ones (Snakemake planning only). Pass more pytest options with ARGS="...".
# Each creates the virtual environment and installs the project first (once).

VENV ?= .venv
PYTHON ?= python3
# Pinned so that torchvision (needed by open_clip) matches torch; override for another platform,
# e.g. `make test TORCH="torch==2.9.1 torchvision==0.24.1"` on aarch64.
TORCH ?= torch==2.14.1 torchvision==0.29.1
CORES ?= 2
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo demo-full claims compare test test-quick test-slurm lint report docs clean

$(BIN)/pdiff: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev,slurm]"
	touch $@

install: $(BIN)/pdiff

SNAKEMAKE := $(BIN)/snakemake --cores $(CORES)
QUICK := config/quick.yaml

demo: install
	$(SNAKEMAKE) --configfile $(QUICK)

demo-full: install
	$(SNAKEMAKE)

# The README's results: the defaults (chosen on seed 1, config/selection.yaml) on seeds 2-4 of
# the demo world and of a held-out world, then docs/results.md and the README's table.
CLAIMS_LABEL := the quick demo (\`config/quick.yaml\`, a procedurally generated miniature of the benchmark with a tiny CLIP: not the paper's benchmark), defaults chosen on seed 1's validation split (\`config/selection.yaml\`), reported on seeds that chose nothing, in the demo world and a held-out world
claims: install
	$(SNAKEMAKE) --configfile $(QUICK) config/claims.yaml
	$(SNAKEMAKE) --configfile $(QUICK) config/claims.yaml config/world1.yaml
	$(MAKE) docs

report: install
	$(SNAKEMAKE) --configfile $(QUICK) --report results/quick/report.html

test: install
	$(BIN)/pytest -q $(ARGS)

test-quick: install
	$(BIN)/pytest -q -m "not workflow and not slurm" $(ARGS)

# docs/results.md and the README's results block from the claims' two reports (`make claims`),
# stamped with the commit, the machine and the date. Torch-free and Snakemake-free: needs only
# Python. Any other report: `pdiff docs SUMMARY --out PAGE`.
CLAIMS := "world 0=results/claims/world0/report/summary.json" \
    "world 1 (held out)=results/claims/world1/report/summary.json"
docs:
	PYTHONPATH=$(CURDIR) $(PYTHON) -m pdiff.report.docs $(CLAIMS) --label "$(CLAIMS_LABEL)" \
	    --out docs/results.md --readme README.md

# Does the quick demo reach the whole demo's conclusions? The whole demo on the claims' seeds
# (config/claims-full.yaml, about an hour on 2 cores; `make claims` first), then
# docs/quick-vs-whole.md: both runs cell by cell (host, row, protocol), signs and verdicts,
# and whether the two differences are farther apart than chance.
COMPARE := "whole demo=results/claims/full/report/summary.json" \
    "quick demo=results/claims/world0/report/summary.json"
COMPARE_LABEL := the whole embedded demo (\`config/config.yaml\`) and the quick demo (\`config/quick.yaml\`), both procedurally generated miniatures of the benchmark with a tiny CLIP (not the paper's benchmark), on the same seeds, which chose no default
compare: install
	$(SNAKEMAKE) --configfile config/config.yaml config/claims-full.yaml
	PYTHONPATH=$(CURDIR) $(PYTHON) -m pdiff.report.docs $(COMPARE) --label "$(COMPARE_LABEL)" \
	    --out docs/quick-vs-whole.md

# The smoke pipeline on a local single-node Slurm (root: installs slurm and munge with apt-get).
test-slurm: install
	.ci/slurm

lint: install
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/snakemake --lint

clean:
	rm -rf results/quick results/claims results/data results/runs results/report .snakemake
