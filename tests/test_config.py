"""One source for every default: the code's config objects against the workflow schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pdiff.config import Config
from pdiff.data.synthetic import COLOURS, FAMILIES, WorldSpec
from pdiff.diffusion.config import DiffusionConfig
from pdiff.diffusion.sampler import FIXED_SOLVERS, SamplingConfig
from pdiff.errors import PdiffError
from pdiff.evaluate import EvaluationConfig
from pdiff.methods import METHODS
from pdiff.methods.base import TrainConfig
from pdiff.overfit import OverfitConfig
from pdiff.plan.config import ConfigError, load_config

SCHEMA = yaml.safe_load(
    (Path(__file__).parents[1] / "workflow" / "schemas" / "config.schema.yaml").read_text()
)
STAGES: dict[str, type[Config]] = {
    "overfit": OverfitConfig,
    "diffusion": DiffusionConfig,
    "sampling": SamplingConfig,
    "evaluation": EvaluationConfig,
}
#: Keys the workflow itself reads and removes before a stage sees the section.
WORKFLOW_KEYS = {"per_method", "per_protocol", "per_dataset"}
TRAINED = sorted(m for m in METHODS if m != "zeroshot")


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its $ref followed (one level of the schema's own $defs)."""
    ref = schema.get("$ref", "")
    if ref.startswith("#/$defs/"):
        return {**SCHEMA["$defs"][ref.removeprefix("#/$defs/")], **schema}
    return schema


def properties(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The properties a (possibly composed) object schema accepts, each resolved."""
    schema = resolve(schema)
    out = {k: resolve(v) for k, v in schema.get("properties", {}).items()}
    for part in schema.get("allOf", []):
        out.update(properties(part))
    return out


@pytest.mark.parametrize("section", STAGES)
def test_stage_sections_and_config_objects_agree(section):
    cls, schema = STAGES[section], SCHEMA["properties"][section]
    props = {k: v for k, v in properties(schema).items() if k not in WORKFLOW_KEYS}
    assert set(props) == cls.keys()  # every key the code reads is accepted, and nothing else
    defaults = cls.defaults()
    for key, prop in props.items():
        if "default" in prop:  # a default the schema fills in is the code's
            assert prop["default"] == defaults[key], key
    required = set(schema.get("required", []))
    assert required == cls.keys() - set(defaults)


@pytest.mark.parametrize("method", TRAINED)
def test_method_blocks_and_config_objects_agree(method):
    config = METHODS[method].config_type
    props = properties(SCHEMA["properties"]["method_params"]["properties"][method])
    code = (config.keys() - config.INTERNAL) | TrainConfig.keys()
    assert set(props) - WORKFLOW_KEYS == code
    defaults = {**TrainConfig.defaults(), **config.defaults()}
    for key, prop in props.items():
        if "default" in prop:
            assert prop["default"] == defaults[key], (method, key)


def test_the_demo_world_is_bounded_by_its_palette_and_families(tmp_path):
    """A world cannot ask for more colours or objects than the generator draws: the schema's
    bounds are the palette's and the families' sizes, and its defaults the generator's."""
    props = SCHEMA["properties"]["world"]["else"]["properties"]  # kind: synthetic
    assert props["colours"]["maximum"] == len(COLOURS)
    assert props["objects"]["maximum"] == min(len(f) for f in FAMILIES.values())
    assert (props["colours"]["default"], props["objects"]["default"]) == (
        WorldSpec.colours, WorldSpec.objects)
    bad = tmp_path / "bad.yaml"
    bad.write_text("world: {colours: 9}\n")
    with pytest.raises(ConfigError, match="maximum of 8"):
        load_config([bad])


def test_schema_solvers_are_the_fixed_grid_ones():
    solver = SCHEMA["properties"]["sampling"]["properties"]["solver"]
    assert solver["enum"] == list(FIXED_SOLVERS)
    assert solver["default"] == SamplingConfig.defaults()["solver"]


def test_from_dict_names_the_key():
    with pytest.raises(PdiffError, match=r"diffusion: unknown key\(s\) \['lrr'\]"):
        DiffusionConfig.from_dict({"steps": 3, "lrr": 0.1})
    with pytest.raises(PdiffError, match=r"overfit lacks \['lr'\]"):
        OverfitConfig.from_dict({"steps": 3})
    with pytest.raises(PdiffError, match=r"sampling.start must be one of 'zero', 'noise'"):
        SamplingConfig.from_dict({"steps": 3, "start": "middle"})
    with pytest.raises(PdiffError, match=r"method_params.kgcoop.kg_weight must be a number"):
        METHODS["kgcoop"].read_config({"n_ctx": 4, "kg_weight": "8"})
    with pytest.raises(PdiffError, match=r"method_params.vpt: unknown key\(s\) \['init'\]"):
        METHODS["vpt"].read_config({"n_ctx": 4, "init": "a photo of a"})
    with pytest.raises(PdiffError, match="evaluation.batch_size must be an integer"):
        EvaluationConfig.from_dict({"batch_size": True})


def test_defaults_fill_what_the_config_leaves_out():
    cfg = DiffusionConfig.from_dict({"steps": 400, "objective": "vp", "prediction": "eps"})
    assert (cfg.lr, cfg.holdout, cfg.prediction) == (0.008, 0.1, "eps")
    assert (cfg.resolved().warmup, cfg.resolved().log_every) == (20, 4)
    assert TrainConfig.from_dict({"lr": 0.1, "batch_size": 4, "epochs": 2}).decay == 5e-4
    adam = {"optimizer": "adam", "lr": 0.1, "batch_size": 4, "epochs": 2}
    assert TrainConfig.from_dict(adam).decay == 0.0
