# Data: the generated world (only when data.source is synthetic: the demo world, or with
# world.kind rehearsal the 15 benchmark datasets with fake images), one check per dataset
# (run first: a missing dataset, split file or image fails in seconds, naming the file) and the
# CoOp few-shot draws. Every job that reads a dataset depends on its check.

if SYNTHETIC:

    rule prepare:
        output:
            manifest=MANIFEST,
        log:
            f"{RESULTS}/logs/prepare/world.log",
        benchmark:
            f"{RESULTS}/benchmarks/prepare/world.tsv"
        localrule: True
        conda:
            "../../envs/pdiff.yaml"
        threads: 2
        resources:
            mem_mb=2000,
            runtime=30,
        params:
            code=world_fingerprint(),
            world=world_json(),
            data_root=data_root,
        shell:
            "pdiff prepare --params {params.world:q} --data-root {params.data_root:q}"
            " --manifest {output.manifest:q} --threads {threads} > {log:q} 2>&1"


rule check_data:
    input:
        MANIFEST if SYNTHETIC else [],
    output:
        check_path("{dataset}"),
    log:
        f"{RESULTS}/logs/check_data/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/check_data/{{dataset}}.tsv"
    localrule: True
    conda:
        "../../envs/pdiff.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=code_fingerprint(
            "pdiff/check_data.py", "pdiff/data/catalogue.py", "pdiff/data/readers.py"
        ),
        datasets=lambda wildcards: f"[{dataset_json(wildcards.dataset)}]",
        data_root=data_root,
    shell:
        "pdiff check-data --data-root {params.data_root:q} --datasets {params.datasets:q}"
        " --out {output:q} --threads {threads} > {log:q} 2>&1"


rule fewshot:
    input:
        data=lambda wildcards: dataset_input(wildcards.dataset),
    output:
        f"{RESULTS}/fewshot/{{dataset}}/shots{{shots}}_seed{{seed}}.json",
    log:
        f"{RESULTS}/logs/fewshot/{{dataset}}/shots{{shots}}_seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/fewshot/{{dataset}}/shots{{shots}}_seed{{seed}}.tsv"
    localrule: True
    conda:
        "../../envs/pdiff.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        code=code_fingerprint(
            "pdiff/data/fewshot.py", "pdiff/data/catalogue.py", "pdiff/data/readers.py"
        ),
        dataset=lambda wildcards: dataset_json(wildcards.dataset),
        limit=limit_arg("train_images"),
        data_root=data_root,
    shell:
        "pdiff fewshot --data-root {params.data_root:q} --dataset {params.dataset:q}"
        " --shots {wildcards.shots} --seed {wildcards.seed} {params.limit} --out {output:q}"
        " --threads {threads} > {log:q} 2>&1"
