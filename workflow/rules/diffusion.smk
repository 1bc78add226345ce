# The prompt diffusion model: a small DiT learns to carry a random prompt to the overfitted
# prompts of the store, conditioned on the image feature.


rule fit_diffusion:
    input:
        unpack(backbone_input),
        prompt=f"{RESULTS}/runs/{RUN}/prompt.safetensors",
        store=f"{RESULTS}/runs/{RUN}/store.h5",
    output:
        dit=f"{RESULTS}/runs/{RUN}/dit.safetensors",
    log:
        f"{RESULTS}/logs/fit_diffusion/{RUN}.log",
    benchmark:
        f"{RESULTS}/benchmarks/fit_diffusion/{RUN}.tsv"
    conda:
        "../../envs/pdiff.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
        gpu=GPU,
    params:
        code=code_fingerprint(
            "pdiff/fit_diffusion.py",
            "pdiff/diffusion/__init__.py",
            "pdiff/diffusion/dit.py",
            "pdiff/diffusion/normalise.py",
            "pdiff/diffusion/objective.py",
            "pdiff/diffusion/train.py",
        ),
        diffusion=to_json(config["diffusion"]),
        backbone=backbone_json(),
    shell:
        "pdiff fit-diffusion --prompt {input.prompt:q} --store {input.store:q}"
        " --backbone {params.backbone:q} --params {params.diffusion:q} --seed {wildcards.seed}"
        " --out {output.dit:q} --threads {threads} > {log:q} 2>&1"
