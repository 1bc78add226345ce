# The frozen-feature cache: image features of open_clip's eval preprocessing, computed once per
# test split and once per few-shot draw (with the augmented training views when `augment` is
# on), then read by every method, seed and mode instead of decoding the same images again.


rule features_test:
    input:
        unpack(backbone_input),
        data=lambda wildcards: dataset_input(wildcards.dataset),
    output:
        TEST_FEATURES,
    log:
        f"{RESULTS}/logs/features/{{dataset}}/test.log",
    benchmark:
        f"{RESULTS}/benchmarks/features/{{dataset}}/test.tsv"
    conda:
        "../../envs/pdiff.yaml"
    threads: job_threads("features_test", cpu=2)
    resources:
        mem_mb=job_mem_mb("features_test"),
        runtime=job_runtime("features_test"),
        gpu=GPU,
    params:
        code=code_fingerprint("pdiff/features.py"),
        backbone=backbone_json(),
        dataset=lambda wildcards: dataset_json(wildcards.dataset),
        limit=limit_arg("test_images"),
        data_root=data_root,
    shell:
        "pdiff features --backbone {params.backbone:q} --data-root {params.data_root:q}"
        " --dataset {params.dataset:q} {params.limit}"
        " --out {output:q} --threads {threads} > {log:q} 2>&1"


rule features_fewshot:
    input:
        unpack(backbone_input),
        fewshot=f"{RESULTS}/fewshot/{{dataset}}/shots{SHOTS}_seed{{seed}}.json",
        data=lambda wildcards: dataset_input(wildcards.dataset),
    output:
        FEWSHOT_FEATURES,
    log:
        f"{RESULTS}/logs/features/{{dataset}}/shots{SHOTS}_seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/features/{{dataset}}/shots{SHOTS}_seed{{seed}}.tsv"
    conda:
        "../../envs/pdiff.yaml"
    threads: job_threads("features_fewshot", cpu=2)
    resources:
        mem_mb=job_mem_mb("features_fewshot"),
        runtime=job_runtime("features_fewshot"),
        gpu=GPU,
    params:
        code=code_fingerprint("pdiff/features.py"),
        backbone=backbone_json(),
        dataset=lambda wildcards: dataset_json(wildcards.dataset),
        augment=augment_arg(),
        data_root=data_root,
    shell:
        "pdiff features --backbone {params.backbone:q} --data-root {params.data_root:q}"
        " --dataset {params.dataset:q} --fewshot {input.fewshot:q} {params.augment}"
        " --out {output:q} --threads {threads} > {log:q} 2>&1"
