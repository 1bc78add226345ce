"""The workflow's plan, torch-free: from a config, every path, setting, recipe, check, code
fingerprint, evaluation set and report output the Snakemake rules use (workflow/rules/common.smk
builds one `Plan` and the rules read it), importable by the report and `pdiff plan-cost` too.

Modules: `names` (the vocabulary: protocols, stages, splits, weights), `config` (loading and
schema validation), `checks` (cross-key checks), `paths` (every path, built once), `variants`
(ablation variants, presets, each stage's config), `recipes` (method_params per protocol and
dataset), `targets` (runs, evaluation sets, the validation evaluations the ablation's choice
reads, the report's inputs and outputs), `fingerprints` (code fingerprints), `study` (the
`Plan`: these together, the rules' params and resources).
Import from the modules: this package's `__init__` imports nothing, so that the cost model can
read `paths` while `study` imports the cost model.
"""
