"""A run's training recipe (`method_params`).

`method_params.<method>` less its override keys, then the override of the run's protocol
(`per_protocol`), then that of its training dataset (`per_dataset`). The protocol follows from
the class set: a base-class run is base-to-new's; the one all-class source run is `transfer`,
since cross-dataset and domain generalisation evaluate that same run (as in the papers, whose DG
numbers come from the cross-dataset ImageNet model), so one recipe serves both. A method without
overrides gives the same params as before they existed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pdiff.plan.config import ConfigError, validate

RECIPE_OVERRIDES = ("per_protocol", "per_dataset")
#: The recipe protocol of a run training on these classes.
PROTOCOL_RECIPE = {"base": "base2new", "all": "transfer"}


def method_params(cfg: Mapping[str, Any], method: str, dataset: str, classes: str) -> dict:
    """The recipe of `method`'s run on `dataset`'s `classes` (base or all)."""
    params = cfg["method_params"][method]
    return {
        **{k: v for k, v in params.items() if k not in RECIPE_OVERRIDES},
        **params.get("per_protocol", {}).get(PROTOCOL_RECIPE[classes], {}),
        **params.get("per_dataset", {}).get(dataset, {}),
    }


def check_recipes(cfg: Mapping[str, Any], schema: Path) -> None:
    """Each protocol's and dataset's recipe of a method validates as that method's block."""
    for method, params in cfg["method_params"].items():
        shared = {k: v for k, v in params.items() if k not in RECIPE_OVERRIDES}
        for where in RECIPE_OVERRIDES:
            for key, override in params.get(where, {}).items():
                name = f"method_params.{method}.{where}.{key}"
                if where == "per_dataset" and key not in cfg["datasets"]:
                    raise ConfigError(
                        f"config: {name} names a dataset that is not in the `datasets` "
                        "catalogue; fix the name or add the dataset."
                    )
                nested = sorted(set(RECIPE_OVERRIDES) & set(override))
                if nested:
                    raise ConfigError(
                        f"config: {name} sets {nested}; overrides do not nest, set the keys "
                        "of the recipe itself."
                    )
                merged = {**cfg["method_params"], method: {**shared, **override}}
                try:
                    validate({**cfg, "method_params": merged}, schema)
                except ConfigError as e:
                    raise ConfigError(f"config: {name}: {e}") from e
