# Baseline prompt learning: one prompt per (dataset, host method, class set, seed) on frozen CLIP,
# trained on the CoOp few-shot draw of that seed (base classes for base-to-new, all classes for
# the cross-dataset and domain-generalisation source).


rule train:
    input:
        unpack(backbone_input),
        fewshot=f"{RESULTS}/fewshot/{{dataset}}/shots{SHOTS}_seed{{seed}}.json",
        features=FEWSHOT_FEATURES,
    output:
        prompt=f"{RESULTS}/runs/{RUN}/prompt.safetensors",
    log:
        f"{RESULTS}/logs/train/{RUN}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{RUN}.tsv"
    conda:
        "../../envs/pdiff.yaml"
    threads: job_threads("train", cpu=1)
    resources:
        mem_mb=job_mem_mb("train"),
        runtime=job_runtime("train"),
        gpu=GPU,
    params:
        code=train_fingerprint,
        method=lambda wildcards: method_json(
            wildcards.method, wildcards.dataset, wildcards.classes
        ),
        backbone=backbone_json(),
        dataset=lambda wildcards: dataset_json(wildcards.dataset),
        augment=augment_arg(),
        data_root=data_root,
    shell:
        "pdiff train --method {wildcards.method} --params {params.method:q}"
        " --backbone {params.backbone:q} --data-root {params.data_root:q}"
        " --dataset {params.dataset:q} --fewshot {input.fewshot:q}"
        " --classes {wildcards.classes} --features {input.features:q} {params.augment}"
        " --seed {wildcards.seed} --out {output.prompt:q}"
        " --threads {threads} > {log:q} 2>&1"
