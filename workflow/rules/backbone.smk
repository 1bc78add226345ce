# Backbone: fetch the configured open_clip weights once into the cache (a local rule, the only
# step that touches the network: on a cluster it runs on the login node), or regenerate the
# demo's tiny CLIP by contrastive pretraining on captioned images drawn procedurally from the
# world (only when backbone.pretrained is "pretrain"; otherwise the backbone is the shipped
# checkpoint, an open_clip tag or a checkpoint path, and no job makes it).
# Pretraining reads only the world's label space and image size (PRETRAIN_WORLD_KEYS), not the
# downstream datasets, so it neither waits for `prepare` nor reruns when e.g. the cast changes.

if PLAN.pretrain:

    rule pretrain:
        output:
            model=PATHS.backbone(),
            metrics=PATHS.backbone(ext="json"),
        log:
            PATHS.log("pretrain", "{model}"),
        benchmark:
            PATHS.benchmark("pretrain", "{model}")
        conda:
            "../../envs/pdiff.yaml"
        threads: 2
        resources:
            mem_mb=8000,
            runtime=180,
            gpu=GPU,
        params:
            code=PLAN.code.rule("pretrain"),
            pretrain=to_json(config["backbone"]["pretrain"]),
            world=PLAN.pretrain_world_json(),
        shell:
            "pdiff pretrain --params {params.pretrain:q} --world {params.world:q}"
            " --model {wildcards.model:q} --out {output.model:q}"
            " --metrics {output.metrics:q} --threads {threads} > {log:q} 2>&1"


if PATHS.weights:

    rule fetch_weights:
        output:
            PATHS.weights,
        log:
            PATHS.log("fetch_weights", PATHS.model),
        benchmark:
            PATHS.benchmark("fetch_weights", PATHS.model)
        localrule: True
        conda:
            "../../envs/pdiff.yaml"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=60,
        params:
            model=PATHS.model,
            pretrained=PLAN.pretrained,
            cache_dir=weights_dir,
        shell:
            "pdiff fetch-weights --model {params.model:q} --pretrained {params.pretrained:q}"
            " --cache-dir {params.cache_dir:q} --threads {threads} > {log:q} 2>&1"
