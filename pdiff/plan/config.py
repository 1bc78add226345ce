"""The workflow's config as Snakemake sees it: overlays merged in order, the schema's defaults
filled in, switched-off protocols dropped; and the schema checks the plan repeats on merged
sections (Snakemake's own `validate`, so messages read as the Snakefile's)."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from pdiff.errors import PdiffError

#: The repository root (the Snakefile's folder) this package sits in.
REPO = Path(__file__).resolve().parents[2]


class ConfigError(PdiffError):
    """A config the workflow cannot plan: the message names the key and the fix."""


def schema_path(root: Path) -> Path:
    return root / "workflow" / "schemas" / "config.schema.yaml"


@functools.cache
def schema(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def validate(cfg: dict[str, Any], path: Path) -> None:
    """Snakemake's schema validation of `cfg` (filling in defaults in place); a ConfigError
    with Snakemake's message when it fails."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate as snakemake_validate

    try:
        snakemake_validate(cfg, str(path))
    except WorkflowError as e:
        raise ConfigError(str(e)) from e


def prepare(cfg: dict[str, Any], root: Path = REPO) -> dict[str, Any]:
    """Validate `cfg` in place (defaults filled in) and drop the protocols set to null: an
    overlay switches a protocol off that way, since it cannot delete keys of the config it
    extends. Returns `cfg`."""
    validate(cfg, schema_path(root))
    cfg["protocols"] = {k: v for k, v in cfg["protocols"].items() if v is not None}
    return cfg


def merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Snakemake's merge of `--configfile` overlays: mappings key by key, the rest replaced."""
    out = dict(base)
    for key, value in overlay.items():
        both = isinstance(value, Mapping) and isinstance(base.get(key), Mapping)
        out[key] = merge(base[key], value) if both else value
    return out


def merged_config(configfiles: Iterable[Path], root: Path = REPO) -> dict[str, Any]:
    """The Snakefile's config/config.yaml with the files merged over it in order, not yet
    validated (no Snakemake needed: a GPU node measuring throughputs may lack it)."""
    cfg: dict[str, Any] = {}
    for path in [root / "config" / "config.yaml", *configfiles]:
        cfg = merge(cfg, yaml.safe_load(Path(path).read_text()) or {})
    return cfg


def load_config(configfiles: Iterable[Path], root: Path = REPO) -> dict[str, Any]:
    """The config the workflow runs with: the Snakefile's config/config.yaml, the files merged
    over it in order, prepared as the workflow does (`prepare`)."""
    return prepare(merged_config(configfiles, root), root)


def stage_keys(path: Path, stages: Iterable[str]) -> dict[str, set[str]]:
    """The keys each stage section may hold (the schema's properties)."""
    props = schema(path)["properties"]
    return {stage: set(props[stage]["properties"]) for stage in stages}
