# Data: the generated world (only when data.source is synthetic: the demo world, or with
# world.kind rehearsal the 15 benchmark datasets with fake images), one check per dataset
# (run first: a missing dataset, split file or image fails in seconds, naming the file) and the
# CoOp few-shot draws. Every job that reads a dataset depends on its check.

if PLAN.synthetic:

    rule prepare:
        output:
            manifest=PATHS.manifest,
        log:
            PATHS.log("prepare", "world"),
        benchmark:
            PATHS.benchmark("prepare", "world")
        localrule: True
        conda:
            "../../envs/pdiff.yaml"
        threads: 2
        resources:
            mem_mb=2000,
            runtime=30,
        params:
            code=PLAN.world_code(),
            world=PLAN.world_json(),
            data_root=data_root,
        shell:
            "pdiff prepare --params {params.world:q} --data-root {params.data_root:q}"
            " --manifest {output.manifest:q} --threads {threads} > {log:q} 2>&1"


rule check_data:
    input:
        PATHS.manifest if PLAN.synthetic else [],
    output:
        PATHS.check(),
    log:
        PATHS.log("check_data", "{dataset}"),
    benchmark:
        PATHS.benchmark("check_data", "{dataset}")
    localrule: True
    conda:
        "../../envs/pdiff.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=PLAN.code.rule("check_data"),
        datasets=lambda wildcards: f"[{dataset_json(wildcards)}]",
        data_root=data_root,
    shell:
        "pdiff check-data --data-root {params.data_root:q} --datasets {params.datasets:q}"
        " --out {output:q} --threads {threads} > {log:q} 2>&1"


rule fewshot:
    input:
        data=dataset_input,
    output:
        PATHS.fewshot(shots="{shots}"),
    log:
        PATHS.log("fewshot", PATHS.draw(shots="{shots}")),
    benchmark:
        PATHS.benchmark("fewshot", PATHS.draw(shots="{shots}"))
    localrule: True
    conda:
        "../../envs/pdiff.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=PLAN.code.rule("fewshot"),
        dataset=dataset_json,
        limit=PLAN.limit_arg("train_images"),
        data_root=data_root,
    shell:
        "pdiff fewshot --data-root {params.data_root:q} --dataset {params.dataset:q}"
        " --shots {wildcards.shots} --seed {wildcards.seed} {params.limit} --out {output:q}"
        " --threads {threads} > {log:q} 2>&1"
