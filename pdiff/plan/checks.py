"""Cross-key checks of a config, for what the JSON schema (which checked every key's shape
already) cannot say; each error names the bad key and the fix."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pdiff.plan.config import ConfigError
from pdiff.plan.names import PRETRAIN, RANDOM, TRANSFER, ZEROSHOT


def check_config(cfg: Mapping[str, Any]) -> None:
    """Raise a ConfigError for a config whose keys disagree with each other."""
    catalogue = cfg["datasets"]
    known = ", ".join(sorted(catalogue))

    def need_dataset(name: str, key: str) -> None:
        if name not in catalogue:
            raise ConfigError(
                f"config: {key} names dataset {name!r}, which is not in the `datasets` catalogue "
                f"(known: {known}). Add an entry `datasets: {{{name}: {{folder: ..., "
                f"split_file: ..., template: ...}}}}` or fix the name in {key}."
            )

    protocols = cfg["protocols"]
    if not protocols:
        raise ConfigError(
            "config: every protocol is switched off (null); keep at least one of base2new, "
            "cross_dataset or domain_generalization."
        )
    if "base2new" in protocols:
        for name in protocols["base2new"]["datasets"]:
            need_dataset(name, "protocols.base2new.datasets")
    for protocol in TRANSFER:
        if protocol in protocols:
            need_dataset(protocols[protocol]["source"], f"protocols.{protocol}.source")
            for name in protocols[protocol]["targets"]:
                need_dataset(name, f"protocols.{protocol}.targets")

    for method in cfg["methods"]:
        if method != ZEROSHOT and method not in cfg["method_params"]:
            raise ConfigError(
                f"config: methods lists {method!r} but method_params has no {method!r} entry. "
                f"Add `method_params: {{{method}: {{...}}}}` (see config/README.md) or remove "
                f"{method!r} from methods."
            )

    if all(p in protocols for p in TRANSFER):
        sources = {protocols[p]["source"] for p in TRANSFER}
        if len(sources) > 1:
            raise ConfigError(
                "config: protocols.cross_dataset.source and protocols.domain_generalization."
                f"source differ ({' vs '.join(sorted(sources))}); both protocols evaluate one "
                "all-class source run (ImageNet in the paper), so give them the same source."
            )

    off = set(cfg.get("ablation", {}).get("protocols", [])) - set(protocols)
    if off:
        raise ConfigError(
            f"config: ablation.protocols lists {sorted(off)}, which `protocols` switches off; "
            f"list only configured protocols ({', '.join(protocols)})."
        )

    check_choose_seeds(cfg)

    diffusion = cfg["diffusion"]
    if diffusion["width"] % diffusion["heads"]:
        raise ConfigError(
            f"config: diffusion.width ({diffusion['width']}) must be divisible by "
            f"diffusion.heads ({diffusion['heads']})."
        )
    check_world(cfg)


def choose_seeds(cfg: Mapping[str, Any]) -> list[int]:
    """`ablation.choose_seeds`: the seeds whose validation numbers choose the ablation's best
    settings (default []: every seed)."""
    return list(cfg.get("ablation", {}).get("choose_seeds", []))


def check_choose_seeds(cfg: Mapping[str, Any]) -> None:
    """The choosing seeds are some of `seeds` and leave at least one to report on."""
    seeds, choose = cfg["seeds"], choose_seeds(cfg)
    odd = sorted(set(choose) - set(seeds))
    if odd or (choose and set(seeds) <= set(choose)):
        raise ConfigError(
            f"config: ablation.choose_seeds {choose} must be some of `seeds` {seeds}, "
            "leaving at least one seed to report on"
            + (f" ({odd} are not in `seeds`)" if odd else "")
            + "; or [] to choose on every seed's validation."
        )


def check_world(cfg: Mapping[str, Any]) -> None:
    """The world and weights a config generates or loads, and that only a config marked
    `rehearsal` uses fake ones."""
    synthetic = cfg["data"]["source"] == "synthetic"
    pretrain = cfg["backbone"]["pretrained"] == PRETRAIN
    if (synthetic or pretrain) and "world" not in cfg:
        why = "data.source is synthetic" if synthetic else "backbone.pretrained is pretrain"
        raise ConfigError(
            f"config: {why}, which needs the `world` section (see config/README.md)."
        )
    if pretrain and "pretrain" not in cfg["backbone"]:
        raise ConfigError(
            "config: backbone.pretrained is pretrain, which needs the backbone.pretrain recipe "
            "(seed, steps, batch_size, lr, weight_decay, warmup)."
        )
    kind = cfg.get("world", {}).get("kind", "synthetic")
    if pretrain and kind == "rehearsal":
        raise ConfigError(
            "config: backbone.pretrained is pretrain, which draws its images from the demo "
            "world, but world.kind is rehearsal; use pretrained: random or real weights instead."
        )

    if kind == "rehearsal" and cfg["world"]["min_side"] > cfg["world"]["max_side"]:
        raise ConfigError(
            f"config: world.min_side ({cfg['world']['min_side']}) exceeds world.max_side "
            f"({cfg['world']['max_side']}); give the shorter image side's range low to high."
        )

    # Random weights or fake data make a rehearsal, never a study: only a config marked so.
    fake = []
    if cfg["backbone"]["pretrained"] == RANDOM:
        fake.append("backbone.pretrained is random (untrained weights)")
    if synthetic and kind == "rehearsal":
        fake.append("world.kind is rehearsal (fake datasets)")
    if fake and not cfg["rehearsal"]:
        raise ConfigError(
            f"config: {' and '.join(fake)} but the config is not marked `rehearsal: true`; "
            "use real weights and data for a study, or add `rehearsal: true` for a rehearsal "
            "(config/rehearsal.yaml)."
        )
