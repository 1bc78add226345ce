# Evaluation. One job per trained run and mode evaluates every (target, split) that run is
# compared on (base + new of its dataset, or all transfer targets), loading the backbone, prompt
# and DiT once; it writes one full-precision record per set into one bundle, which is all the
# report reads. Baseline and diffusion are separate rules so that each one's params hold exactly
# its config: changing `sampling` reruns evaluate_diffusion (and the report) only.


rule evaluate_baseline:
    input:
        unpack(backbone_input),
        prompt=PATHS.prompt(),
        data=sets_data(run_sets),
        features=sets_features(run_sets),
    output:
        PATHS.evaluation(mode="baseline"),
    log:
        PATHS.log("evaluate_baseline", RUN),
    benchmark:
        PATHS.benchmark("evaluate_baseline", RUN)
    conda:
        "../../envs/pdiff.yaml"
    threads: PLAN.threads("evaluate_baseline")
    resources:
        mem_mb=PLAN.mem_mb("evaluate_baseline"),
        runtime=PLAN.runtime("evaluate_baseline"),
        gpu=GPU,
    params:
        code=PLAN.code.rule("evaluate_baseline"),
        evaluation=PLAN.evaluation_json(),
        backbone=PLAN.backbone_json(),
        sets=sets_json(run_sets),
        features=features_json(run_sets),
        limit=PLAN.limit_arg("test_images"),
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
        prompt=PATHS.prompt(),
        dit=PATHS.dit(),
        store=PATHS.store(),
        data=sets_data(run_sets),
        features=sets_features(run_sets),
    output:
        PATHS.evaluation(mode="diffusion"),
    log:
        PATHS.log("evaluate_diffusion", f"{RUN}/{{ov}}/{{dv}}/{{sv}}"),
    benchmark:
        PATHS.benchmark("evaluate_diffusion", f"{RUN}/{{ov}}/{{dv}}/{{sv}}")
    conda:
        "../../envs/pdiff.yaml"
    threads: PLAN.threads("evaluate_diffusion")
    resources:
        mem_mb=PLAN.mem_mb("evaluate_diffusion"),
        runtime=PLAN.runtime("evaluate_diffusion"),
        gpu=GPU,
    params:
        code=PLAN.code.rule("evaluate_diffusion"),
        evaluation=lambda wildcards: PLAN.evaluation_json(
            PLAN.settings.stage_config("sampling", wildcards.sv, wildcards.method)
        ),
        variant=lambda wildcards: to_json(
            {
                "overfit": wildcards.ov,
                "diffusion": wildcards.dv,
                "sampling": wildcards.sv,
            }
        ),
        backbone=PLAN.backbone_json(),
        sets=sets_json(run_sets),
        features=features_json(run_sets),
        limit=PLAN.limit_arg("test_images"),
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
        data=sets_data(zeroshot_sets),
        features=sets_features(zeroshot_sets),
    output:
        PATHS.zeroshot(),
    log:
        PATHS.log("evaluate_zeroshot", "{dataset}"),
    benchmark:
        PATHS.benchmark("evaluate_zeroshot", "{dataset}")
    conda:
        "../../envs/pdiff.yaml"
    threads: PLAN.threads("evaluate_zeroshot")
    resources:
        mem_mb=PLAN.mem_mb("evaluate_zeroshot"),
        runtime=PLAN.runtime("evaluate_zeroshot"),
        gpu=GPU,
    params:
        code=PLAN.code.rule("evaluate_zeroshot"),
        evaluation=PLAN.evaluation_json(),
        backbone=PLAN.backbone_json(),
        sets=sets_json(zeroshot_sets),
        features=features_json(zeroshot_sets),
        limit=PLAN.limit_arg("test_images"),
        data_root=data_root,
    shell:
        "pdiff evaluate --mode zeroshot --backbone {params.backbone:q}"
        " --data-root {params.data_root:q} --sets {params.sets:q}"
        " --features {params.features:q} {params.limit}"
        " --params {params.evaluation:q} --seed 0 --out {output:q}"
        " --threads {threads} > {log:q} 2>&1"


# Validation (issue 18; pdiff/plan/targets.py): a run's prompt, and its DiT in each setting
# the ablation compares, on the run's own few-shot validation images (its classes of the draw's
# `val` list), read through the draw's feature cache. Only the ablation's choice reads these;
# they need nothing that is not already made for the test evaluations. Resources and code: the
# run's test evaluation's (an upper bound: at most 4 validation images per class).


rule evaluate_val_baseline:
    input:
        unpack(backbone_input),
        prompt=PATHS.prompt(),
        fewshot=PATHS.fewshot(),
        features=PATHS.fewshot_features(),
        data=dataset_input,
    output:
        PATHS.evaluation(mode="baseline", val=True),
    log:
        PATHS.log("evaluate_val_baseline", RUN),
    benchmark:
        PATHS.benchmark("evaluate_val_baseline", RUN)
    conda:
        "../../envs/pdiff.yaml"
    threads: PLAN.threads("evaluate_baseline")
    resources:
        mem_mb=PLAN.mem_mb("evaluate_baseline"),
        runtime=PLAN.runtime("evaluate_baseline"),
        gpu=GPU,
    params:
        code=PLAN.code.rule("evaluate_baseline"),
        evaluation=PLAN.evaluation_json(),
        backbone=PLAN.backbone_json(),
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
        prompt=PATHS.prompt(),
        dit=PATHS.dit(),
        store=PATHS.store(),
        fewshot=PATHS.fewshot(),
        features=PATHS.fewshot_features(),
        data=dataset_input,
    output:
        PATHS.evaluation(mode="diffusion", val=True),
    log:
        PATHS.log("evaluate_val_diffusion", f"{RUN}/{{ov}}/{{dv}}/{{sv}}"),
    benchmark:
        PATHS.benchmark("evaluate_val_diffusion", f"{RUN}/{{ov}}/{{dv}}/{{sv}}")
    conda:
        "../../envs/pdiff.yaml"
    threads: PLAN.threads("evaluate_diffusion")
    resources:
        mem_mb=PLAN.mem_mb("evaluate_diffusion"),
        runtime=PLAN.runtime("evaluate_diffusion"),
        gpu=GPU,
    params:
        code=PLAN.code.rule("evaluate_diffusion"),
        evaluation=lambda wildcards: PLAN.evaluation_json(
            PLAN.settings.stage_config("sampling", wildcards.sv, wildcards.method)
        ),
        variant=lambda wildcards: to_json(
            {
                "overfit": wildcards.ov,
                "diffusion": wildcards.dv,
                "sampling": wildcards.sv,
            }
        ),
        backbone=PLAN.backbone_json(),
        sets=val_sets_json,
        data_root=data_root,
    shell:
        "pdiff evaluate --mode diffusion --prompt {input.prompt:q} --dit {input.dit:q}"
        " --store {input.store:q} --variant {params.variant:q}"
        " --backbone {params.backbone:q} --data-root {params.data_root:q}"
        " --sets {params.sets:q} --params {params.evaluation:q}"
        " --seed {wildcards.seed} --out {output:q} --threads {threads} > {log:q} 2>&1"
