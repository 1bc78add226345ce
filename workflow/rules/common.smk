# Glue between the config and the rules: the config prepared (schema defaults, switched-off
# protocols dropped) and checked, and one `Plan` (pdiff/plan/, torch-free) holding every path,
# setting, recipe, fingerprint, evaluation set and report output of this config; plus the thin
# wrappers Snakemake needs (input functions of `wildcards`, the report's flagged outputs). No
# rules live here, and no path or setting is built here: see pdiff/plan/.

import os
from pathlib import Path

from snakemake.exceptions import WorkflowError

from pdiff.plan.config import ConfigError, prepare
from pdiff.plan.paths import RUN
from pdiff.plan.study import Plan, to_json

try:
    PLAN = Plan(prepare(config, Path(workflow.basedir)), Path(workflow.basedir))
except ConfigError as e:
    raise WorkflowError(str(e)) from None

PATHS = PLAN.paths
TARGETS = PLAN.targets
GPU = PLAN.gpu


wildcard_constraints:
    **PLAN.wildcard_constraints(),


# ---------------------------------------------------------------------------------------------
# Input and params functions of a job's wildcards
# ---------------------------------------------------------------------------------------------


def backbone_input(wildcards):
    """The checkpoint file jobs load when the workflow makes it (pretrain or fetch_weights)."""
    return PLAN.backbone_input()


def data_root(wildcards):
    """The data root for --data-root (a function: a hardcoded input prefix trips the linter)."""
    return PATHS.data_root


def weights_dir(wildcards):
    """The weights cache for --cache-dir (a function, as data_root)."""
    return PATHS.weights_dir


def dataset_input(wildcards):
    """What a job reading the dataset depends on: its check_data report, so a missing or
    broken dataset stops the workflow in seconds, before any training starts."""
    return PATHS.check(wildcards.dataset)


def dataset_json(wildcards):
    return PLAN.dataset_json(wildcards.dataset)


def train_code(wildcards):
    return PLAN.code.rule("train", wildcards.method)


def run_sets(wildcards):
    """(target, split) pairs one trained run's evaluation covers."""
    return TARGETS.eval_sets(wildcards.dataset, wildcards.classes)


def zeroshot_sets(wildcards):
    return TARGETS.zeroshot_sets(wildcards.dataset)


def sets_data(sets):
    """Input function: the check_data reports of the datasets `sets(wildcards)` covers."""
    return lambda wildcards: TARGETS.sets_input(sets(wildcards))


def sets_features(sets):
    """Input function: the test-split feature caches `sets(wildcards)` reads."""
    return lambda wildcards: list(TARGETS.test_features(sets(wildcards)).values())


def sets_json(sets):
    """Params function: the --sets argument of `sets(wildcards)`."""
    return lambda wildcards: PLAN.sets_json(sets(wildcards))


def features_json(sets):
    """Params function: the --features argument (dataset -> test-split feature cache)."""
    return lambda wildcards: to_json(TARGETS.test_features(sets(wildcards)))


def val_sets_json(wildcards):
    """Params function: the --sets argument of a run's validation (its draw's `val` part)."""
    return PLAN.val_sets_json(wildcards.dataset, wildcards.classes, wildcards.seed)


def stage_json(stage, variant):
    """Params function: --params of overfit and fit_diffusion for the job's variant."""
    return lambda wildcards: PLAN.stage_json(
        stage, getattr(wildcards, variant), wildcards.method
    )


# ---------------------------------------------------------------------------------------------
# The report's outputs: tables' CSVs and figures flagged for `snakemake --report`
# ---------------------------------------------------------------------------------------------


def report_outputs():
    return {
        name: report(path, caption=caption, category=category) if caption else path
        for name, (path, caption, category) in TARGETS.report_files().items()
    }
