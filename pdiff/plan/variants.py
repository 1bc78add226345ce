"""Settings of prompt diffusion: ablation variants, presets and each stage's config.

An ablation entry (the `ablation` key) overriding one stage's section is a named variant (e.g.
`steps=10`); `default` is the section as configured. A store depends on the overfit variant, a
DiT on the overfit and diffusion variants, a diffusion evaluation on all three, so a new variant
reuses everything upstream of its stage. Variants are compared one stage at a time around the
defaults.

A preset (the `presets` key) is a whole setting evaluated beside the configured one, each a row
of its own in the report. It drops the sections' per-method entries (pdiff's choices per host)
and sets its keys over each section. Each stage's output goes where an equal setting's goes:
`default` when the stage's config equals the method's default, else the folder named by the keys
in which it differs, the name an ablation entry changing just those keys gets. So a preset
computes only the stages it changes, per method, and shares a store, DiT or evaluation with any
equal setting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pdiff.plan.config import ConfigError, stage_keys, validate
from pdiff.plan.names import DEFAULT, STAGES, TRANSFER, default_ablation_protocols

#: (overfit, diffusion, sampling) folder names of one diffusion evaluation.
Combo = tuple[str, str, str]

#: The paper's method (arXiv 2410.20164): per-sample overfitting with the host's own loss (no
#: KL anchor), a DiT trained on the whole store with the diffusion loss alone (no
#: classification term, no hold-out), sampling from Gaussian prompts in five ODE steps. Values
#: spelled as the ablation entries that set them (kl_weight 0.0), so equal settings get equal
#: folder names.
PRESET_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "overfit": {"kl_weight": 0.0},
        "diffusion": {"cls_weight": 0.0, "holdout": 0.0},
        "sampling": {"start": "noise", "steps": 5},
    },
}


def variant_name(override: Mapping[str, Any]) -> str:
    """The folder name of a stage override, e.g. `lr=0.02,steps=3` (`methods` is no setting)."""
    return ",".join(f"{k}={override[k]}" for k in sorted(override) if k != "methods")


class Settings:
    """Every setting of prompt diffusion a config evaluates, per stage and method; built and
    checked (each merged section validated against the schema) from the config."""

    def __init__(self, cfg: Mapping[str, Any], trained: Sequence[str], schema: Path) -> None:
        self.cfg = cfg
        self.trained = list(trained)
        self.schema = schema
        ablation = cfg.get("ablation", {})
        # stage -> variant name -> the override it applies; an entry's `methods` key only says
        # which methods compare it (variant_methods), it is no setting of the stage.
        self.variants: dict[str, dict[str, dict[str, Any]]] = {
            stage: {
                DEFAULT: {},
                **{
                    variant_name(o): {k: v for k, v in o.items() if k != "methods"}
                    for o in ablation.get(stage, [])
                },
            }
            for stage in STAGES
        }
        self.variant_methods: dict[tuple[str, str], list[str]] = {
            (stage, variant_name(o)): o["methods"]
            for stage in STAGES
            for o in ablation.get(stage, [])
            if "methods" in o
        }
        self.presets: list[str] = list(cfg["presets"])
        self.preset_stages: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self.check_variants()
        self.preset_stages, self.preset_combos = self.preset_tables()
        # The protocols the settings are compared on (`ablation.protocols`; default:
        # base-to-new, else the transfer protocols).
        self.ablation_protocols: list[str] = ablation.get("protocols") or (
            default_ablation_protocols(cfg["protocols"])
        )
        # (overfit, diffusion, sampling) variants whose diffusion evaluation the report shows:
        # the defaults, then each variant with the other two stages at their defaults.
        self.combos: list[Combo] = [(DEFAULT, DEFAULT, DEFAULT)] + [
            tuple(name if s == stage else DEFAULT for s in STAGES)  # type: ignore[misc]
            for stage in STAGES
            for name in self.variants[stage]
            if name != DEFAULT
        ]

    def section(self, stage: str) -> dict[str, Any]:
        """The `stage` section as configured, without its per-method entries."""
        return {k: v for k, v in self.cfg[stage].items() if k != "per_method"}

    def stage_config(self, stage: str, variant: str, method: str) -> dict[str, Any]:
        """The `stage` section for `method` (its `per_method` entry over the section), with
        `variant`'s override applied; a preset's folder name gives that preset's section."""
        if variant not in self.variants[stage]:
            return self.preset_stages[stage, method][variant]
        return {
            **self.section(stage),
            **self.cfg[stage].get("per_method", {}).get(method, {}),
            **self.variants[stage][variant],
        }

    def check_variants(self) -> None:
        cfg = self.cfg
        keys = stage_keys(self.schema, STAGES)
        for stage in STAGES:
            for method in cfg[stage].get("per_method", {}):
                if method not in cfg["method_params"]:
                    raise ConfigError(
                        f"config: {stage}.per_method names {method!r}, which has no "
                        f"method_params entry; fix the name or add `method_params: "
                        f"{{{method}: {{...}}}}`."
                    )
            for name, override in self.variants[stage].items():
                unknown = set(override) - set(cfg[stage]) - keys[stage]
                if unknown or "per_method" in override:
                    raise ConfigError(
                        f"config: ablation.{stage} entry {override} sets unknown key(s) "
                        f"{sorted(unknown | ({'per_method'} & set(override)))}; use keys of the "
                        f"`{stage}` section."
                    )
                for method in self.trained:
                    merged = self.stage_config(stage, name, method)
                    try:
                        validate({**cfg, stage: merged}, self.schema)
                    except ConfigError as e:
                        where = (
                            f"ablation.{stage} entry {override}"
                            if override
                            else f"{stage}.per_method.{method}"
                        )
                        raise ConfigError(f"config: {where}: {e}") from e
        for (stage, name), methods in self.variant_methods.items():
            unknown = set(methods) - set(self.trained)
            if unknown:
                raise ConfigError(
                    f"config: ablation.{stage} entry {name} lists methods {sorted(unknown)} "
                    f"that `methods` does not train ({', '.join(self.trained)})."
                )

    def preset_stage(self, preset: str, stage: str, method: str) -> tuple[str, dict[str, Any]]:
        """(folder name, config) of `preset`'s `stage` section for `method`."""
        default = self.stage_config(stage, DEFAULT, method)
        # a key only a per-method entry sets (cls_batch) takes its absent value, null
        setting = {
            **dict.fromkeys(default),
            **self.section(stage),
            **PRESET_SETTINGS[preset][stage],
        }
        diff = {k: v for k, v in setting.items() if v != default.get(k)}
        if not diff:
            return DEFAULT, default
        name = variant_name(diff)
        if name in self.variants[stage] and self.stage_config(stage, name, method) != setting:
            raise ConfigError(
                f"config: preset {preset!r} and ablation.{stage} entry {name} share a folder "
                f"name but differ for {method}; change the ablation entry."
            )
        return name, setting

    def preset_tables(
        self,
    ) -> tuple[dict[tuple[str, str], dict[str, dict[str, Any]]], dict[str, dict[str, Combo]]]:
        """(stage, method) -> folder name -> config of every preset's stage output, and preset
        -> method -> its (overfit, diffusion, sampling) folders; each config validated."""
        stages: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
            (stage, method): {} for stage in STAGES for method in self.trained
        }
        combos: dict[str, dict[str, Combo]] = {preset: {} for preset in self.presets}
        for preset in self.presets:
            for method in self.trained:
                combo = []
                for stage in STAGES:
                    name, setting = self.preset_stage(preset, stage, method)
                    try:
                        validate({**self.cfg, stage: setting}, self.schema)
                    except ConfigError as e:
                        raise ConfigError(
                            f"config: preset {preset!r}, {stage} of {method}: {e}"
                        ) from e
                    stages[stage, method][name] = setting
                    combo.append(name)
                combos[preset][method] = tuple(combo)  # type: ignore[assignment]
        return stages, combos

    def stage_names(self, stage: str) -> set[str]:
        """Every folder name of `stage`'s outputs: the ablation's variants and the presets'."""
        return set(self.variants[stage]).union(
            *(self.preset_stages[stage, method] for method in self.trained)
        )

    def ablated(self, classes: str) -> bool:
        """Whether the settings are compared on the runs training on `classes` (base or all)."""
        if classes == "base":
            return "base2new" in self.ablation_protocols
        return any(p in self.ablation_protocols for p in TRANSFER)

    def compares(self, combo: Combo, method: str) -> bool:
        """Whether `method` is compared under the (overfit, diffusion, sampling) `combo`."""
        return all(
            method in self.variant_methods.get((stage, name), [method])
            for stage, name in zip(STAGES, combo, strict=True)
        )

    def val_combos(self, method: str) -> list[Combo]:
        """The diffusion settings the ablation table lists for `method`, each evaluated on
        validation too: the ablation's combos it is compared under and a preset's that changes
        at most one stage (the report leaves a preset that changes more out of the ablation)."""
        combos = [c for c in self.combos if self.compares(c, method)]
        combos += [
            self.preset_combos[p][method]
            for p in self.presets
            if sum(name != DEFAULT for name in self.preset_combos[p][method]) <= 1
        ]
        return list(dict.fromkeys(combos))
