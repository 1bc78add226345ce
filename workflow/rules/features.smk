# The frozen-feature cache: image features of open_clip's eval preprocessing, computed once per
# test split and once per few-shot draw (with the augmented training views when `augment` is
# on), then read by every method, seed and mode instead of decoding the same images again.


rule features_test:
    input:
        unpack(backbone_input),
        data=dataset_input,
    output:
        PATHS.test_features(),
    log:
        PATHS.log("features", "{dataset}/test"),
    benchmark:
        PATHS.benchmark("features", "{dataset}/test")
    conda:
        "../../envs/pdiff.yaml"
    threads: PLAN.threads("features_test")
    resources:
        mem_mb=PLAN.mem_mb("features_test"),
        runtime=PLAN.runtime("features_test"),
        gpu=GPU,
    params:
        code=PLAN.code.rule("features"),
        backbone=PLAN.backbone_json(),
        dataset=dataset_json,
        limit=PLAN.limit_arg("test_images"),
        data_root=data_root,
    shell:
        "pdiff features --backbone {params.backbone:q} --data-root {params.data_root:q}"
        " --dataset {params.dataset:q} {params.limit}"
        " --out {output:q} --threads {threads} > {log:q} 2>&1"


rule features_fewshot:
    input:
        unpack(backbone_input),
        fewshot=PATHS.fewshot(),
        data=dataset_input,
    output:
        PATHS.fewshot_features(),
    log:
        PATHS.log("features", PATHS.draw()),
    benchmark:
        PATHS.benchmark("features", PATHS.draw())
    conda:
        "../../envs/pdiff.yaml"
    threads: PLAN.threads("features_fewshot")
    resources:
        mem_mb=PLAN.mem_mb("features_fewshot"),
        runtime=PLAN.runtime("features_fewshot"),
        gpu=GPU,
    params:
        code=PLAN.code.rule("features"),
        backbone=PLAN.backbone_json(),
        dataset=dataset_json,
        augment=PLAN.augment_arg(),
        data_root=data_root,
    shell:
        "pdiff features --backbone {params.backbone:q} --data-root {params.data_root:q}"
        " --dataset {params.dataset:q} --fewshot {input.fewshot:q} {params.augment}"
        " --out {output:q} --threads {threads} > {log:q} 2>&1"
