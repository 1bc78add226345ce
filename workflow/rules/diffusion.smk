# The prompt diffusion model: a small DiT learns to carry a random prompt to the overfitted
# prompts of the store, conditioned on the image feature.


rule fit_diffusion:
    input:
        unpack(backbone_input),
        prompt=f"{RESULTS}/runs/{RUN}/prompt.safetensors",
        store=STORE,
    output:
        dit=DIT,
        diagnostics=DIT.replace(".safetensors", ".json"),
    log:
        f"{RESULTS}/logs/fit_diffusion/{RUN}/{{ov}}/{{dv}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/fit_diffusion/{RUN}/{{ov}}/{{dv}}.tsv"
    conda:
        "../../envs/pdiff.yaml"
    threads: job_threads("fit_diffusion", cpu=1)
    resources:
        mem_mb=job_mem_mb("fit_diffusion"),
        runtime=job_runtime("fit_diffusion"),
        gpu=GPU,
    params:
        code=code_fingerprint(
            "pdiff/fit_dit.py",
            "pdiff/sampled_softmax.py",
            "pdiff/diffusion/__init__.py",
            "pdiff/diffusion/config.py",
            "pdiff/diffusion/dit.py",
            "pdiff/diffusion/normalise.py",
            "pdiff/diffusion/objective.py",
            "pdiff/diffusion/trainer.py",
        ),
        diffusion=lambda wildcards: to_json(
            {
                **stage_config("diffusion", wildcards.dv, wildcards.method),
                **compute_params(),
            }
        ),
        backbone=backbone_json(),
    shell:
        "pdiff fit-diffusion --prompt {input.prompt:q} --store {input.store:q}"
        " --backbone {params.backbone:q} --params {params.diffusion:q} --seed {wildcards.seed}"
        " --out {output.dit:q} --diagnostics {output.diagnostics:q}"
        " --threads {threads} > {log:q} 2>&1"
