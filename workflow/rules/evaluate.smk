# Evaluation. One job per trained run and mode evaluates every (target, split) that run is
# compared on (base + new of its dataset, or all transfer targets), loading the backbone, prompt
# and DiT once; it writes one full-precision record per set into one bundle, which is all the
# report reads. Baseline and diffusion are separate rules so that each one's params hold exactly
# its config: changing `sampling` reruns evaluate_diffusion (and the report) only.


rule evaluate_baseline:
    input:
        unpack(backbone_input),
        prompt=f"{RESULTS}/runs/{RUN}/prompt.safetensors",
        data=lambda wildcards: sets_input(
            eval_sets(wildcards.dataset, wildcards.classes)
        ),
        features=lambda wildcards: test_features(
            eval_sets(wildcards.dataset, wildcards.classes)
        ).values(),
    output:
        f"{RESULTS}/runs/{RUN}/eval/baseline.json",
    log:
        f"{RESULTS}/logs/evaluate_baseline/{RUN}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_baseline/{RUN}.tsv"
    conda:
        "../../envs/pdiff.yaml"
    threads: job_threads("evaluate_baseline", cpu=1)
    resources:
        mem_mb=job_mem_mb("evaluate_baseline"),
        runtime=job_runtime("evaluate_baseline"),
        gpu=GPU,
    params:
        code=code_fingerprint("pdiff/evaluate.py"),
        evaluation=to_json({"evaluation": config["evaluation"], **compute_params()}),
        backbone=backbone_json(),
        sets=lambda wildcards: sets_json(
            eval_sets(wildcards.dataset, wildcards.classes)
        ),
        features=lambda wildcards: to_json(
            test_features(eval_sets(wildcards.dataset, wildcards.classes))
        ),
        limit=limit_arg("test_images"),
        data_root=data_root,
    shell:
        "pdiff evaluate --mode baseline --prompt {input.prompt:q}"
        " --backbone {params.backbone:q} --data-root {params.data_root:q}"
        " --sets {params.sets:q} --features {params.features:q} {params.limit}"
        " --params {params.evaluation:q}"
        " --seed {wildcards.seed} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule evaluate_diffusion:
    input:
        unpack(backbone_input),
        prompt=f"{RESULTS}/runs/{RUN}/prompt.safetensors",
        dit=DIT,
        store=STORE,
        data=lambda wildcards: sets_input(
            eval_sets(wildcards.dataset, wildcards.classes)
        ),
        features=lambda wildcards: test_features(
            eval_sets(wildcards.dataset, wildcards.classes)
        ).values(),
    output:
        f"{RESULTS}/runs/{RUN}/eval/diffusion/{{ov}}/{{dv}}/{{sv}}.json",
    log:
        f"{RESULTS}/logs/evaluate_diffusion/{RUN}/{{ov}}/{{dv}}/{{sv}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_diffusion/{RUN}/{{ov}}/{{dv}}/{{sv}}.tsv"
    conda:
        "../../envs/pdiff.yaml"
    threads: job_threads("evaluate_diffusion", cpu=1)
    resources:
        mem_mb=job_mem_mb("evaluate_diffusion"),
        runtime=job_runtime("evaluate_diffusion"),
        gpu=GPU,
    params:
        code=code_fingerprint("pdiff/evaluate.py", "pdiff/diffusion/sampler.py"),
        evaluation=lambda wildcards: to_json(
            {
                "evaluation": config["evaluation"],
                "sampling": stage_config("sampling", wildcards.sv, wildcards.method),
                **compute_params(),
            }
        ),
        variant=lambda wildcards: to_json(
            {
                "overfit": wildcards.ov,
                "diffusion": wildcards.dv,
                "sampling": wildcards.sv,
            }
        ),
        backbone=backbone_json(),
        sets=lambda wildcards: sets_json(
            eval_sets(wildcards.dataset, wildcards.classes)
        ),
        features=lambda wildcards: to_json(
            test_features(eval_sets(wildcards.dataset, wildcards.classes))
        ),
        limit=limit_arg("test_images"),
        data_root=data_root,
    shell:
        "pdiff evaluate --mode diffusion --prompt {input.prompt:q} --dit {input.dit:q}"
        " --store {input.store:q} --variant {params.variant:q}"
        " --backbone {params.backbone:q} --data-root {params.data_root:q}"
        " --sets {params.sets:q} --features {params.features:q} {params.limit}"
        " --params {params.evaluation:q}"
        " --seed {wildcards.seed} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule evaluate_zeroshot:
    input:
        unpack(backbone_input),
        data=lambda wildcards: sets_input(zeroshot_sets(wildcards.dataset)),
        features=lambda wildcards: test_features(
            zeroshot_sets(wildcards.dataset)
        ).values(),
    output:
        f"{RESULTS}/zeroshot/{{dataset}}.json",
    log:
        f"{RESULTS}/logs/evaluate_zeroshot/{{dataset}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_zeroshot/{{dataset}}.tsv"
    conda:
        "../../envs/pdiff.yaml"
    threads: job_threads("evaluate_zeroshot", cpu=1)
    resources:
        mem_mb=job_mem_mb("evaluate_zeroshot"),
        runtime=job_runtime("evaluate_zeroshot"),
        gpu=GPU,
    params:
        code=code_fingerprint("pdiff/evaluate.py", *method_modules("zeroshot")),
        evaluation=to_json({"evaluation": config["evaluation"], **compute_params()}),
        backbone=backbone_json(),
        sets=lambda wildcards: sets_json(zeroshot_sets(wildcards.dataset)),
        features=lambda wildcards: to_json(
            test_features(zeroshot_sets(wildcards.dataset))
        ),
        limit=limit_arg("test_images"),
        data_root=data_root,
    shell:
        "pdiff evaluate --mode zeroshot --backbone {params.backbone:q}"
        " --data-root {params.data_root:q} --sets {params.sets:q}"
        " --features {params.features:q} {params.limit}"
        " --params {params.evaluation:q} --seed 0 --out {output:q}"
        " --threads {threads} > {log:q} 2>&1"


# Validation (issue 18; common.smk, "Validation"): a run's prompt, and its DiT in each setting
# the ablation compares, on the run's own few-shot validation images (its classes of the draw's
# `val` list), read through the draw's feature cache. Only the ablation's choice reads these;
# they need nothing that is not already made for the test evaluations. Resources: the run's test
# evaluation's (an upper bound: at most 4 validation images per class).


rule evaluate_val_baseline:
    input:
        unpack(backbone_input),
        prompt=f"{RESULTS}/runs/{RUN}/prompt.safetensors",
        fewshot=f"{RESULTS}/fewshot/{{dataset}}/shots{SHOTS}_seed{{seed}}.json",
        features=FEWSHOT_FEATURES,
        data=lambda wildcards: dataset_input(wildcards.dataset),
    output:
        f"{RESULTS}/runs/{RUN}/eval/val/baseline.json",
    log:
        f"{RESULTS}/logs/evaluate_val_baseline/{RUN}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_val_baseline/{RUN}.tsv"
    conda:
        "../../envs/pdiff.yaml"
    threads: job_threads("evaluate_baseline", cpu=1)
    resources:
        mem_mb=job_mem_mb("evaluate_baseline"),
        runtime=job_runtime("evaluate_baseline"),
        gpu=GPU,
    params:
        code=code_fingerprint("pdiff/evaluate.py"),
        evaluation=to_json({"evaluation": config["evaluation"], **compute_params()}),
        backbone=backbone_json(),
        sets=val_sets_json,
        data_root=data_root,
    shell:
        "pdiff evaluate --mode baseline --prompt {input.prompt:q}"
        " --backbone {params.backbone:q} --data-root {params.data_root:q}"
        " --sets {params.sets:q} --params {params.evaluation:q}"
        " --seed {wildcards.seed} --out {output:q} --threads {threads} > {log:q} 2>&1"


rule evaluate_val_diffusion:
    input:
        unpack(backbone_input),
        prompt=f"{RESULTS}/runs/{RUN}/prompt.safetensors",
        dit=DIT,
        store=STORE,
        fewshot=f"{RESULTS}/fewshot/{{dataset}}/shots{SHOTS}_seed{{seed}}.json",
        features=FEWSHOT_FEATURES,
        data=lambda wildcards: dataset_input(wildcards.dataset),
    output:
        f"{RESULTS}/runs/{RUN}/eval/val/diffusion/{{ov}}/{{dv}}/{{sv}}.json",
    log:
        f"{RESULTS}/logs/evaluate_val_diffusion/{RUN}/{{ov}}/{{dv}}/{{sv}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_val_diffusion/{RUN}/{{ov}}/{{dv}}/{{sv}}.tsv"
    conda:
        "../../envs/pdiff.yaml"
    threads: job_threads("evaluate_diffusion", cpu=1)
    resources:
        mem_mb=job_mem_mb("evaluate_diffusion"),
        runtime=job_runtime("evaluate_diffusion"),
        gpu=GPU,
    params:
        code=code_fingerprint("pdiff/evaluate.py", "pdiff/diffusion/sampler.py"),
        evaluation=lambda wildcards: to_json(
            {
                "evaluation": config["evaluation"],
                "sampling": stage_config("sampling", wildcards.sv, wildcards.method),
                **compute_params(),
            }
        ),
        variant=lambda wildcards: to_json(
            {
                "overfit": wildcards.ov,
                "diffusion": wildcards.dv,
                "sampling": wildcards.sv,
            }
        ),
        backbone=backbone_json(),
        sets=val_sets_json,
        data_root=data_root,
    shell:
        "pdiff evaluate --mode diffusion --prompt {input.prompt:q} --dit {input.dit:q}"
        " --store {input.store:q} --variant {params.variant:q}"
        " --backbone {params.backbone:q} --data-root {params.data_root:q}"
        " --sets {params.sets:q} --params {params.evaluation:q}"
        " --seed {wildcards.seed} --out {output:q} --threads {threads} > {log:q} 2>&1"
