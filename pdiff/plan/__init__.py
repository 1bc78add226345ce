"""The workflow's plan, torch-free: from a config, every path, setting, recipe, check, code
fingerprint, evaluation set and report output the Snakemake rules use (workflow/rules/common.smk
builds one `Plan` and the rules read it), importable by the report and `pdiff plan-cost` too.

Modules: `names` (the vocabulary: protocols, stages, weights), `config` (loading and schema
validation), `checks` (cross-key checks), `paths` (every path, built once), `variants`
(ablation variants, presets, each stage's config), `recipes` (method_params per protocol and
dataset), `targets` (runs, evaluation sets, the report's inputs and outputs), `fingerprints`
(code fingerprints), `study` (the `Plan`: these together, the rules' params and resources).
"""

from pdiff.plan.config import ConfigError, load_config, prepare
from pdiff.plan.study import Plan

__all__ = ["ConfigError", "Plan", "load_config", "prepare"]
