# Evaluation. One JSON per (run, target dataset, split, mode), full precision; the report reads
# only these. The baseline and diffusion modes are separate rules so that each one's params hold
# exactly its config: changing `sampling` reruns evaluate_diffusion (and the report) only.

EVAL = f"{RESULTS}/runs/{RUN}/eval/{{target}}_{{split}}"


rule evaluate_baseline:
    input:
        unpack(backbone_input),
        prompt=f"{RESULTS}/runs/{RUN}/prompt.safetensors",
        data=lambda wildcards: dataset_input(wildcards.target),
    output:
        f"{EVAL}_baseline.json",
    log:
        f"{RESULTS}/logs/evaluate_baseline/{RUN}/{{target}}_{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_baseline/{RUN}/{{target}}_{{split}}.tsv"
    conda:
        "../../envs/pdiff.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
        gpu=GPU,
    params:
        evaluation=to_json({"evaluation": config["evaluation"]}),
        backbone=backbone_json(),
        dataset=lambda wildcards: dataset_json(wildcards.target),
        data_root=data_root,
    shell:
        "pdiff evaluate --mode baseline --prompt {input.prompt:q}"
        " --backbone {params.backbone:q} --data-root {params.data_root:q}"
        " --dataset {params.dataset:q} --split {wildcards.split}"
        " --params {params.evaluation:q} --seed {wildcards.seed} --out {output:q}"
        " --threads {threads} > {log:q} 2>&1"


rule evaluate_diffusion:
    input:
        unpack(backbone_input),
        prompt=f"{RESULTS}/runs/{RUN}/prompt.safetensors",
        dit=f"{RESULTS}/runs/{RUN}/dit.safetensors",
        data=lambda wildcards: dataset_input(wildcards.target),
    output:
        f"{EVAL}_diffusion.json",
    log:
        f"{RESULTS}/logs/evaluate_diffusion/{RUN}/{{target}}_{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_diffusion/{RUN}/{{target}}_{{split}}.tsv"
    conda:
        "../../envs/pdiff.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=60,
        gpu=GPU,
    params:
        evaluation=to_json(
            {"evaluation": config["evaluation"], "sampling": config["sampling"]}
        ),
        backbone=backbone_json(),
        dataset=lambda wildcards: dataset_json(wildcards.target),
        data_root=data_root,
    shell:
        "pdiff evaluate --mode diffusion --prompt {input.prompt:q} --dit {input.dit:q}"
        " --backbone {params.backbone:q} --data-root {params.data_root:q}"
        " --dataset {params.dataset:q} --split {wildcards.split}"
        " --params {params.evaluation:q} --seed {wildcards.seed} --out {output:q}"
        " --threads {threads} > {log:q} 2>&1"


rule evaluate_zeroshot:
    input:
        unpack(backbone_input),
        data=lambda wildcards: dataset_input(wildcards.target),
    output:
        f"{RESULTS}/zeroshot/{{target}}_{{split}}.json",
    log:
        f"{RESULTS}/logs/evaluate_zeroshot/{{target}}_{{split}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate_zeroshot/{{target}}_{{split}}.tsv"
    conda:
        "../../envs/pdiff.yaml"
    threads: 1
    resources:
        mem_mb=3000,
        runtime=30,
        gpu=GPU,
    params:
        evaluation=to_json({"evaluation": config["evaluation"]}),
        backbone=backbone_json(),
        dataset=lambda wildcards: dataset_json(wildcards.target),
        data_root=data_root,
    shell:
        "pdiff evaluate --mode zeroshot --backbone {params.backbone:q}"
        " --data-root {params.data_root:q} --dataset {params.dataset:q}"
        " --split {wildcards.split} --params {params.evaluation:q} --seed 0 --out {output:q}"
        " --threads {threads} > {log:q} 2>&1"
