# pdiff: prompt diffusion for CLIP prompt learning.
#
#   snakemake --cores 2                                    the embedded demo (config/config.yaml)
#   snakemake --cores 2 --configfile config/smoke.yaml     a tiny end-to-end run (tests)
#   snakemake --workflow-profile workflow/profiles/default  local defaults (2 cores, ...)
#   snakemake --report report.html                         browsable tables and figures
#
# Every rule calls one `pdiff` subcommand; stages live in workflow/rules/, one file each.

from snakemake.utils import min_version

min_version("9.0")


# Validated against workflow/schemas/config.schema.yaml and checked by common.smk (pdiff/plan/).
configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


# Cheap rules (data checks, few-shot draws, weights, report) are marked `localrule: True`
# where they are defined: on SLURM they run on the login node, not as jobs.
localrules:
    all,


rule all:
    default_target: True
    input:
        TARGETS.final_outputs(),


include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/backbone.smk"
include: "workflow/rules/prompts.smk"
include: "workflow/rules/overfit.smk"
include: "workflow/rules/diffusion.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
