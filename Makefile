# `make demo` runs the embedded demo pipeline end to end; `make test` runs the whole test suite
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

.PHONY: install demo test test-quick test-slurm lint report docs clean

$(BIN)/pdiff: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev,slurm]"
	touch $@

install: $(BIN)/pdiff

demo: install
	$(BIN)/snakemake --cores $(CORES)

report: install
	$(BIN)/snakemake --cores $(CORES) --report results/report.html

test: install
	$(BIN)/pytest -q $(ARGS)

test-quick: install
	$(BIN)/pytest -q -m "not workflow and not slurm" $(ARGS)

# docs/results.md and the README's results block from a report's summary.json, stamped with the
# commit, the machine and the date. Torch-free and Snakemake-free: needs only Python.
SUMMARY ?= results/report/summary.json
docs:
	PYTHONPATH=$(CURDIR) $(PYTHON) -m pdiff.report.docs $(SUMMARY) --out docs/results.md --readme README.md

# The smoke pipeline on a local single-node Slurm (root: installs slurm and munge with apt-get).
test-slurm: install
	.ci/slurm

lint: install
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check Snakefile workflow
	$(BIN)/snakemake --lint

clean:
	rm -rf results/* .snakemake
