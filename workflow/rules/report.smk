# The report: base-to-new, cross-dataset and domain-generalisation tables (CSV + Markdown), figures
# and a full-precision summary.json, from the evaluation JSONs and the DiTs' diagnostics only.


rule report:
    input:
        evaluations=TARGETS.report_inputs(),
        diagnostics=TARGETS.diagnostics_inputs(),
        validation=TARGETS.validation_inputs(),  # only with an ablation: its choice reads these
    output:
        **report_outputs(),
    log:
        PATHS.log("report", "report"),
    benchmark:
        PATHS.benchmark("report", "report")
    localrule: True
    conda:
        "../../envs/pdiff.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=PLAN.code.rule("report"),
        report=to_json(TARGETS.report_params()),
        out_dir=lambda wildcards, output: os.path.dirname(output.summary),
    shell:
        "pdiff report --inputs {input.evaluations:q} {input.validation:q}"
        " --diagnostics {input.diagnostics:q} --params {params.report:q}"
        " --out-dir {params.out_dir:q} --threads {threads} > {log:q} 2>&1"
