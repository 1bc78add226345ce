"""Shared fixtures: a tiny randomly initialised CLIP checkpoint and a tiny synthetic world.

No weights can be downloaded in tests: every checkpoint is created here.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import open_clip  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from pdiff.backbone import load_backbone, register_model_configs  # noqa: E402
from pdiff.data.synthetic import write_world  # noqa: E402

TINY_WORLD = {"seed": 0, "image_size": 32, "cast": 0.4, "train_per_class": 4,
              "val_per_class": 2, "test_per_class": 3, "colours": 4, "objects": 2}


def write_checkpoint(folder: Path, seed: int = 0) -> str:
    """A randomly initialised pdiff-tiny checkpoint (seeded) in `folder`."""
    register_model_configs()
    torch.manual_seed(seed)
    model = open_clip.create_model("pdiff-tiny", pretrained=None)
    path = folder / f"pdiff-tiny-random{seed}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="session")
def backbone_spec(tiny_checkpoint) -> dict:
    return {"model": "pdiff-tiny", "pretrained": tiny_checkpoint}


@pytest.fixture(scope="session")
def backbone(backbone_spec):
    return load_backbone(backbone_spec)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> str:
    """A tiny world in the CoOp layout: 8 classes per dataset."""
    root = tmp_path_factory.mktemp("world")
    write_world(root, TINY_WORLD)
    return str(root)


def dataset_spec(name: str) -> dict:
    return {"name": name, "folder": name, "split_file": f"split_zhou_{name}.json",
            "template": "a photo of a {}."}


REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SMOKE = REPO / "config" / "smoke.yaml"


# A dataset no test or code knows about, in the CoOp layout, added to the smoke run by config
# alone (a cross-dataset target): what a user does with their own data.
CUSTOM_CLASSES = ["amber kite", "teal lantern", "violet anchor", "olive compass"]


def write_custom_dataset(root: Path, counts: tuple[int, int, int] = (4, 2, 3)) -> dict:
    """Tiny CoOp-layout dataset (split JSON + JPEGs/PNGs of varied sizes and modes, a colour
    per class; `counts` images per class in train, val, test); its catalogue entry."""
    import json

    from tests.fixture_trees import save_varied

    g = torch.Generator().manual_seed(0)
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, name in enumerate(CUSTOM_CLASSES):
        colour = tuple(int(c) for c in torch.randint(0, 256, (3,), generator=g))
        for part, n in zip(("train", "val", "test"), counts, strict=True):
            for i in range(n):
                images = root / "custom" / "images"
                path = save_varied(images / name.replace(" ", "_") / f"{part}_{i}", colour,
                                   label + i)
                split[part].append([path.relative_to(images).as_posix(), label, name])
    (root / "custom" / "split_custom.json").write_text(json.dumps(split))
    return {"folder": "custom", "split_file": "split_custom.json", "image_dir": "images",
            "template": "a photo of a {}."}


def smoke_config(workdir: Path) -> Path:
    """The smoke config plus the custom dataset (written under its data root) as a
    cross-dataset target; returns the config file to run."""
    import yaml

    cfg = yaml.safe_load(SMOKE.read_text())
    cfg["datasets"]["custom"] = write_custom_dataset(workdir / cfg["data"]["root"])
    cfg["protocols"]["cross_dataset"]["targets"].append("custom")
    path = workdir / "smoke-custom.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def smoke_snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """Snakemake on the smoke config (+ custom dataset) with this venv's `pdiff`, in `workdir`."""
    config = workdir / "smoke-custom.yaml"
    if not config.exists():
        config = smoke_config(workdir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory",
         str(workdir), "--configfile", str(config), "--workflow-profile", "none", *args],
        env=env, capture_output=True, text=True, timeout=1500,
    )


def run_smoke(workdir: Path) -> Path:
    """The smoke DAG run for real in `workdir`: its results folder."""
    res = smoke_snakemake(workdir, "--cores", "2")
    assert res.returncode == 0, res.stderr[-4000:]
    return workdir / "results" / "smoke"


@pytest.fixture(scope="session")
def smoke(tmp_path_factory) -> Path:
    """The smoke DAG run once per session."""
    return run_smoke(tmp_path_factory.mktemp("smoke"))
