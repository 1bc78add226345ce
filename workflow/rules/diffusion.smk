# The prompt diffusion model: a small DiT learns to carry a random prompt to the overfitted
# prompts of the store, conditioned on the image feature.


rule fit_diffusion:
    input:
        unpack(backbone_input),
        prompt=PATHS.prompt(),
        store=PATHS.store(),
    output:
        dit=PATHS.dit(),
        diagnostics=PATHS.dit(ext="json"),
    log:
        PATHS.log("fit_diffusion", f"{RUN}/{{ov}}/{{dv}}"),
    benchmark:
        PATHS.benchmark("fit_diffusion", f"{RUN}/{{ov}}/{{dv}}")
    conda:
        "../../envs/pdiff.yaml"
    threads: PLAN.threads("fit_diffusion")
    resources:
        mem_mb=PLAN.mem_mb("fit_diffusion"),
        runtime=PLAN.runtime("fit_diffusion"),
        gpu=GPU,
    params:
        code=PLAN.code.rule("fit_diffusion"),
        diffusion=stage_json("diffusion", "dv"),
        backbone=PLAN.backbone_json(),
    shell:
        "pdiff fit-diffusion --prompt {input.prompt:q} --store {input.store:q}"
        " --backbone {params.backbone:q} --params {params.diffusion:q} --seed {wildcards.seed}"
        " --out {output.dit:q} --diagnostics {output.diagnostics:q}"
        " --threads {threads} > {log:q} 2>&1"
