# Per-sample overfitting: from the learned prompt, a few steps on each training sample's own loss
# give its overfitted prompt; all of them, with the frozen image features, go to an HDF5 store.


rule overfit:
    input:
        unpack(backbone_input),
        prompt=PATHS.prompt(),
        fewshot=PATHS.fewshot(),
        features=PATHS.fewshot_features(),
    output:
        store=PATHS.store(),
    log:
        PATHS.log("overfit", f"{RUN}/{{ov}}"),
    benchmark:
        PATHS.benchmark("overfit", f"{RUN}/{{ov}}")
    conda:
        "../../envs/pdiff.yaml"
    threads: PLAN.threads("overfit")
    resources:
        mem_mb=PLAN.mem_mb("overfit"),
        runtime=PLAN.runtime("overfit"),
        gpu=GPU,
    params:
        code=PLAN.code.rule("overfit"),
        overfit=stage_json("overfit", "ov"),
        backbone=PLAN.backbone_json(),
        dataset=dataset_json,
        data_root=data_root,
    shell:
        "pdiff overfit --prompt {input.prompt:q} --backbone {params.backbone:q}"
        " --data-root {params.data_root:q} --dataset {params.dataset:q}"
        " --fewshot {input.fewshot:q} --features {input.features:q}"
        " --params {params.overfit:q} --seed {wildcards.seed}"
        " --out {output.store:q} --threads {threads} > {log:q} 2>&1"
