# The report: base-to-new, cross-dataset and domain-generalisation tables (CSV + Markdown), figures
# and a full-precision summary.json, from the evaluation JSONs and the DiTs' diagnostics only.


rule report:
    input:
        evaluations=report_inputs(),
        diagnostics=diagnostics_inputs(),
        validation=validation_inputs(),  # only with an ablation: its choice reads these
    output:
        **report_outputs(),
    log:
        f"{RESULTS}/logs/report/report.log",
    benchmark:
        f"{RESULTS}/benchmarks/report/report.tsv"
    localrule: True
    conda:
        "../../envs/pdiff.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code_fingerprint("pdiff/report"),
        report=to_json({**report_params(), **validation_params()}),
        out_dir=lambda wildcards, output: os.path.dirname(output.summary),
    shell:
        "pdiff report --inputs {input.evaluations:q} {input.validation:q}"
        " --diagnostics {input.diagnostics:q} --params {params.report:q}"
        " --out-dir {params.out_dir:q} --threads {threads} > {log:q} 2>&1"
