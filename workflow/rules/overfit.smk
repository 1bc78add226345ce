# Per-sample overfitting: from the learned prompt, a few steps on each training sample's own loss
# give its overfitted prompt; all of them, with the frozen image features, go to an HDF5 store.


rule overfit:
    input:
        unpack(backbone_input),
        prompt=f"{RESULTS}/runs/{RUN}/prompt.safetensors",
        fewshot=f"{RESULTS}/fewshot/{{dataset}}/shots{SHOTS}_seed{{seed}}.json",
        features=FEWSHOT_FEATURES,
    output:
        store=STORE,
    log:
        f"{RESULTS}/logs/overfit/{RUN}/{{ov}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/overfit/{RUN}/{{ov}}.tsv"
    conda:
        "../../envs/pdiff.yaml"
    threads: job_threads("overfit", cpu=2)
    resources:
        mem_mb=job_mem_mb("overfit"),
        runtime=job_runtime("overfit"),
        gpu=GPU,
    params:
        code=code_fingerprint("pdiff/overfit.py", "pdiff/store.py"),
        overfit=lambda wildcards: to_json(
            {
                **stage_config("overfit", wildcards.ov, wildcards.method),
                **compute_params(),
            }
        ),
        backbone=backbone_json(),
        dataset=lambda wildcards: dataset_json(wildcards.dataset),
        data_root=data_root,
    shell:
        "pdiff overfit --prompt {input.prompt:q} --backbone {params.backbone:q}"
        " --data-root {params.data_root:q} --dataset {params.dataset:q}"
        " --fewshot {input.fewshot:q} --features {input.features:q}"
        " --params {params.overfit:q} --seed {wildcards.seed}"
        " --out {output.store:q} --threads {threads} > {log:q} 2>&1"
