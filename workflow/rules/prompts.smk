# Baseline prompt learning: one prompt per (dataset, host method, class set, seed) on frozen CLIP,
# trained on the CoOp few-shot draw of that seed (base classes for base-to-new, all classes for
# the cross-dataset and domain-generalisation source).


rule train:
    input:
        unpack(backbone_input),
        fewshot=PATHS.fewshot(),
        features=PATHS.fewshot_features(),
    output:
        prompt=PATHS.prompt(),
    log:
        PATHS.log("train", RUN),
    benchmark:
        PATHS.benchmark("train", RUN)
    conda:
        "../../envs/pdiff.yaml"
    threads: PLAN.threads("train")
    resources:
        mem_mb=PLAN.mem_mb("train"),
        runtime=PLAN.runtime("train"),
        gpu=GPU,
    params:
        code=train_code,
        method=lambda wildcards: PLAN.method_json(
            wildcards.method, wildcards.dataset, wildcards.classes
        ),
        backbone=PLAN.backbone_json(),
        dataset=dataset_json,
        augment=PLAN.augment_arg(),
        data_root=data_root,
    shell:
        "pdiff train --method {wildcards.method} --params {params.method:q}"
        " --backbone {params.backbone:q} --data-root {params.data_root:q}"
        " --dataset {params.dataset:q} --fewshot {input.fewshot:q}"
        " --classes {wildcards.classes} --features {input.features:q} {params.augment}"
        " --seed {wildcards.seed} --out {output.prompt:q}"
        " --threads {threads} > {log:q} 2>&1"
