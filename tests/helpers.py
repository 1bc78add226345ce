"""Helpers shared by the test modules; the one place they live (fixtures are in conftest.py).

Test modules import from here and never from each other or from conftest.py (checked by
tests/test_hygiene.py). Sections: running Snakemake; the tiny checkpoint and world; the smoke
run and its checks; the marker a Snakemake command needs; miniature CoOp dataset trees.
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from PIL import Image

from pdiff.data import KNOWN_DATASETS, Datum

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
SNAKEFMT = str(BIN / "snakefmt")
DEMO = REPO / "config" / "config.yaml"
SMOKE = REPO / "config" / "smoke.yaml"
BENCHMARK = REPO / "config" / "benchmark.yaml"
TIMEOUT = 600  # s, one Snakemake call that plans (dry runs, lint, the stub run)
SMOKE_TIMEOUT = 1500  # s, the smoke DAG run for real

# ---------------------------------------------------------------------------------------------
# Running Snakemake
# ---------------------------------------------------------------------------------------------


def env(extra_path: Path | None = None) -> dict[str, str]:
    """The environment of a Snakemake call: offline, with `extra_path` (a `pdiff`) first."""
    out = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if extra_path is not None:
        out["PATH"] = f"{extra_path}{os.pathsep}{out.get('PATH', '')}"
    return out


def run(args, cwd=REPO, path=None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env(path), capture_output=True,
                          text=True, timeout=timeout)


def snakemake(workdir: Path, *args, configfile: Path | list[Path] = DEMO, path=None,
              snakefile=None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Snakemake on the repo's Snakefile (or `snakefile`) with its working directory in
    `workdir`; several config files are merged in order, as Snakemake does with overlays."""
    configs = configfile if isinstance(configfile, list) else [configfile]
    return run([SNAKEMAKE, "--snakefile", snakefile or REPO / "Snakefile", "--directory", workdir,
                "--configfile", *configs, "--workflow-profile", "none", *args],
               path=path, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The first 'Job stats' table of a dry run, rule -> count (empty: nothing to be done)."""
    counts: dict[str, int] = {}
    lines = output.splitlines()
    try:
        start = lines.index("Job stats:")
    except ValueError:
        return counts
    for line in lines[start + 1 :]:
        m = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if m:
            if m.group(1) == "total":
                break
            counts[m.group(1)] = int(m.group(2))
    return counts


def plan(workdir: Path, configfile: Path | list[Path], *args) -> tuple[dict[str, int], str]:
    res = snakemake(workdir, "-n", "--quiet", "rules", *args, configfile=configfile)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    return job_counts(out), out


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def write_config(tmp_path: Path, cfg: dict, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def set_key(cfg: dict, dotted: str, value) -> dict:
    """A copy of `cfg` with the key at the `dotted` path set to `value`."""
    cfg = copy.deepcopy(cfg)
    *parents, leaf = dotted.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    node[leaf] = value
    return cfg


def shell_commands(out: str) -> list[list[str]]:
    """The `pdiff` commands a `snakemake -n -p` printed, as argv lists."""
    cmds = []
    for line in out.splitlines():
        if line.startswith("Shell command: "):
            cmd = line[len("Shell command: ") :]
            if cmd == "None":  # rule all
                continue
            assert cmd.endswith(" 2>&1"), cmd
            cmds.append(shlex.split(cmd.rsplit(" > ", 1)[0]))
    return cmds


# ---------------------------------------------------------------------------------------------
# The tiny checkpoint and world (no weights can be downloaded in tests: all are made here)
# ---------------------------------------------------------------------------------------------

TINY_WORLD = {"seed": 0, "image_size": 32, "cast": 0.4, "train_per_class": 4,
              "val_per_class": 2, "test_per_class": 3, "colours": 4, "objects": 2}


def write_checkpoint(folder: Path, seed: int = 0) -> str:
    """A randomly initialised pdiff-tiny checkpoint (seeded) in `folder`."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from pdiff.backbone import register_model_configs

    register_model_configs()
    torch.manual_seed(seed)
    model = open_clip.create_model("pdiff-tiny", pretrained=None)
    path = folder / f"pdiff-tiny-random{seed}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def write_bundles(folder: Path, bundles: dict[str, list[dict]]) -> list[Path]:
    """Evaluation bundles as `pdiff evaluate` writes them: file name -> its records."""
    paths = []
    for name, records in bundles.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"evaluations": records}))
        paths.append(path)
    return paths


def dataset_spec(name: str) -> dict:
    return {"name": name, "folder": name, "split_file": f"split_zhou_{name}.json",
            "template": "a photo of a {}."}


# A CoOp run on the tiny world, stage by stage through the CLI (seconds): the recipes, and the
# runner that builds it for the modules that test what the stages write or refuse.
TINY_COOP = {"n_ctx": 4, "init": "random", "optimizer": "adam", "lr": 0.002, "batch_size": 8,
             "epochs": 2, "warmup_epochs": 1}
TINY_OVERFIT = {"steps": 2, "lr": 0.01, "batch_size": 4}
TINY_DIFFUSION = {"objective": "flow", "target": "residual", "normalise": "scalar", "depth": 1,
                  "width": 32, "heads": 2, "steps": 10, "batch_size": 8, "lr": 0.001,
                  "weight_decay": 0.0, "ema": 0.99, "cls_weight": 0.0, "holdout": 0.0}


def run_cli(*args: str, log_level: str = "WARNING") -> int:
    """`pdiff <args>` in this process, on one thread: its exit code."""
    from pdiff.cli import main

    return main([*args, "--threads", "1", "--log-level", log_level])


def tiny_coop_run(d: Path, data_root: str, backbone_spec: dict, *, coop: dict = TINY_COOP,
                  overfit: dict = TINY_OVERFIT, diffusion: dict | None = TINY_DIFFUSION,
                  features: bool = False, diagnostics: bool = False) -> Path:
    """fewshot (2 shots, seed 1) -> [features] -> train -> overfit -> [fit-diffusion] for CoOp on
    the base classes of `shapes` under `data_root`, written into `d`."""
    bb, ds = json.dumps(backbone_spec), json.dumps(dataset_spec("shapes"))
    data = ["--data-root", data_root, "--dataset", ds]
    assert run_cli("fewshot", *data, "--shots", "2", "--seed", "1", "--out", f"{d}/fs.json") == 0
    if features:
        assert run_cli("features", "--backbone", bb, *data, "--fewshot", f"{d}/fs.json",
                       "--out", f"{d}/fs.h5") == 0
    assert run_cli("train", "--method", "coop", "--params", json.dumps(coop), "--backbone", bb,
                   *data, "--fewshot", f"{d}/fs.json", "--classes", "base", "--seed", "1",
                   "--out", f"{d}/prompt.safetensors") == 0
    assert run_cli("overfit", "--prompt", f"{d}/prompt.safetensors", "--backbone", bb, *data,
                   "--fewshot", f"{d}/fs.json", "--params", json.dumps(overfit), "--seed", "1",
                   "--out", f"{d}/store.h5") == 0
    if diffusion is not None:
        extra = ["--diagnostics", f"{d}/dit.json"] if diagnostics else []
        assert run_cli("fit-diffusion", "--prompt", f"{d}/prompt.safetensors", "--store",
                       f"{d}/store.h5", "--backbone", bb, "--params", json.dumps(diffusion),
                       "--seed", "1", "--out", f"{d}/dit.safetensors", *extra) == 0
    return d


# ---------------------------------------------------------------------------------------------
# The smoke run: the smoke config plus a user's dataset, for real, and what it must produce
# ---------------------------------------------------------------------------------------------

# A dataset no test or code knows about, in the CoOp layout, added to the smoke run by config
# alone (a cross-dataset target): what a user does with their own data.
CUSTOM_CLASSES = ["amber kite", "teal lantern", "violet anchor", "olive compass"]


def write_custom_dataset(root: Path, counts: tuple[int, int, int] = (4, 2, 3)) -> dict:
    """Tiny CoOp-layout dataset (split JSON + JPEGs/PNGs of varied sizes and modes, a colour
    per class; `counts` images per class in train, val, test); its catalogue entry."""
    import torch

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
    cfg = load(SMOKE)
    cfg["datasets"]["custom"] = write_custom_dataset(workdir / cfg["data"]["root"])
    cfg["protocols"]["cross_dataset"]["targets"].append("custom")
    return write_config(workdir, cfg, "smoke-custom.yaml")


def smoke_snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """Snakemake on the smoke config (+ custom dataset) with this venv's `pdiff`, in `workdir`."""
    config = workdir / "smoke-custom.yaml"
    if not config.exists():
        config = smoke_config(workdir)
    return snakemake(workdir, *args, configfile=config, path=BIN, timeout=SMOKE_TIMEOUT)


def run_smoke(workdir: Path) -> Path:
    """The smoke DAG run for real in `workdir`: its results folder."""
    res = smoke_snakemake(workdir, "--cores", "2")
    assert res.returncode == 0, res.stderr[-4000:]
    return workdir / "results" / "smoke"


SMOKE_ROWS = {"zero-shot CLIP", "CoOp", "CoOp + prompt diffusion", "MaPLe",
              "MaPLe + prompt diffusion"}


def csv_rows(path: Path) -> list[dict]:
    import csv

    with path.open() as f:
        return list(csv.DictReader(f))


def check_smoke_report(results: Path) -> None:
    """Every row in every protocol's table, and the figures, of a smoke run's report."""
    for table in ("base2new", "cross_dataset", "domain_generalization"):
        rows = csv_rows(results / "report" / f"{table}.csv")
        labels = {r.get("row") or r.get("method") for r in rows}
        assert SMOKE_ROWS <= labels, (table, labels)
        assert (results / "report" / f"{table}.md").read_text().count("|") > 10
    for fig in ("base2new.png", "transfer.png"):
        assert (results / "report" / "figures" / fig).read_bytes()[:4] == b"\x89PNG"


def check_smoke_metrics(results: Path) -> None:
    """A smoke run's evaluation JSON: every record, in full precision."""
    files = sorted((results / "runs").glob("*/*/*/*/eval/**/*.json"))
    assert len(files) == 12  # (2 base-to-new runs + 1 source run) x 2 methods x 2 modes
    records = [m for f in files for m in json.loads(f.read_text())["evaluations"]]
    # each method: 2 base-to-new x (base, new) + source, 2 cross (icons, custom), 1 DG target
    assert len(records) == (2 * 2 + 4) * 2 * 2
    for m in records:
        assert 0 <= m["accuracy"] <= 100 and m["total"] > 0
        assert m["accuracy"] == 100 * m["correct"] / m["total"]


def check_smoke_backbone_and_stores(results: Path) -> None:
    """A smoke run pretrained its backbone and wrote every prompt store, none left partial."""
    metrics = json.loads((results / "backbone" / "pdiff-tiny.json").read_text())
    assert metrics["steps"] == 20 and "zero_shot_clean" in metrics
    assert len(list((results / "runs").rglob("store.h5"))) == 6
    assert not list(results.rglob("*.partial"))


# ---------------------------------------------------------------------------------------------
# Markers: a test that runs Snakemake says so (pyproject's markers; enforced in conftest.py)
# ---------------------------------------------------------------------------------------------

DRY = ("-n", "--dry-run", "--dryrun", "--lint", "--list-rules", "--summary", "-S")


def marker_needed(argv: str | Sequence) -> set[str] | None:
    """The markers of which a test running `argv` needs one: {workflow, slurm} for Snakemake
    running jobs, {dryrun, workflow, slurm} for Snakemake planning only; None for anything
    else."""
    words = shlex.split(argv) if isinstance(argv, str) else [str(a) for a in argv]
    if not words or Path(words[0]).name != "snakemake" and words[1:3] != ["-m", "snakemake"]:
        return None
    if any(w in DRY for w in words):
        return {"dryrun", "workflow", "slurm"}
    return {"workflow", "slurm"}


# ---------------------------------------------------------------------------------------------
# Miniature copies of the 15 CoOp benchmark datasets' on-disk layouts, for reader tests.
#
# Each tree has two classes and a few 4x4 images per class and split, with the file names,
# folders and class names the real dataset (and CoOp's split files) use, e.g. the raw names CoOp
# stores ("apple_pie", "Apply_Eye_Makeup") and the cleaned ones a reader must return.
# ---------------------------------------------------------------------------------------------

# Real datasets mix sizes, aspect ratios, formats and modes: (width, height, mode, format).
VARIED = [(29, 29, "RGB", "JPEG"), (52, 28, "L", "JPEG"), (40, 75, "P", "PNG"),
          (64, 48, "RGBA", "PNG"), (33, 61, "CMYK", "JPEG"), (90, 40, "RGB", "PNG")]


def save_varied(path: Path, colour: tuple[int, int, int], i: int) -> Path:
    """An image of one colour with noise, the i-th of VARIED's sizes/modes; the suffix follows
    its format. Returns the path written."""
    import numpy as np

    w, h, mode, fmt = VARIED[i % len(VARIED)]
    noise = np.random.default_rng(i).integers(-30, 30, (h, w, 3))
    rgb = Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype("uint8"))
    im = rgb.quantize(16) if mode == "P" else rgb.convert(mode)
    path = path.with_suffix(".jpg" if fmt == "JPEG" else ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt)
    return path


PER_SPLIT = {"train": 2, "val": 1, "test": 1}  # images per class, list-based datasets
TEST_ONLY = 2  # images per class, test-only datasets


@dataclass
class Tree:
    """What a reader must find in a built tree; paths are relative to the data root."""

    name: str
    classnames: list[str]
    counts: dict[str, int]
    index_file: str  # a file the reader needs (split file, classnames.txt, ...)
    images: list[str]


def write_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (seed * 37 % 256, seed * 91 % 256, 128)).save(path)


# CoOp name -> (image path pattern inside image_dir, [(class dir, name as stored, cleaned)]).
SPLIT_JSON_TREES: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "Caltech101": ("{d}/image_{n:04d}.jpg", [
        ("Faces", "face", "face"), ("yin_yang", "yin_yang", "yin yang")]),
    "OxfordPets": ("{d}_{n}.jpg", [
        ("Abyssinian", "abyssinian", "abyssinian"),
        ("american_bulldog", "american_bulldog", "american bulldog")]),
    "StanfordCars": ("cars_{part}/{n:05d}.jpg", [
        ("", "1993 Geo Metro Convertible", "1993 Geo Metro Convertible"),
        ("", "2012 Tesla Model S Sedan", "2012 Tesla Model S Sedan")]),
    "OxfordFlowers": ("image_{n:05d}.jpg", [
        ("", "pink primrose", "pink primrose"),
        ("", "hard-leaved pocket orchid", "hard-leaved pocket orchid")]),
    "Food101": ("{d}/{n}.jpg", [
        ("apple_pie", "apple_pie", "apple pie"),
        ("baby_back_ribs", "baby_back_ribs", "baby back ribs")]),
    "SUN397": ("{d}/sun_{n:04d}.jpg", [
        ("a/abbey", "abbey", "abbey"),
        ("a/apartment_building/outdoor", "outdoor apartment_building",
         "outdoor apartment building")]),
    "DescribableTextures": ("{d}/{d}_{n:04d}.jpg", [
        ("banded", "banded", "banded"), ("bubbly", "bubbly", "bubbly")]),
    "EuroSAT": ("{d}/{d}_{n}.jpg", [
        ("AnnualCrop", "Annual Crop Land", "Annual Crop Land"),
        ("SeaLake", "Sea or Lake", "Sea or Lake")]),
    "UCF101": ("{d}/v_{n:04d}.jpg", [
        ("Apply_Eye_Makeup", "Apply_Eye_Makeup", "Apply Eye Makeup"),
        ("Band_Marching", "Band_Marching", "Band Marching")]),
}

# (wnid, name) lines of a classnames.txt: CoOp's file holds all 1000 ImageNet classes, so the
# miniature's holds more lines than any one tree has folders.
WNIDS = [
    ("n01440764", "tench"),
    ("n01443537", "goldfish"),
    ("n01484850", "great white shark"),
    ("n01498041", "stingray"),
]


def _dirs(root: Path, name: str) -> tuple[Path, Path]:
    known = KNOWN_DATASETS[name]
    folder = root / known["folder"]
    return folder, folder / known["image_dir"]


def _classnames_txt(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("".join(f"{w} {n}\n" for w, n in WNIDS))


def _split_json(root: Path, name: str) -> Tree:
    pattern, classes = SPLIT_JSON_TREES[name]
    folder, image_dir = _dirs(root, name)
    split: dict[str, list] = {s: [] for s in PER_SPLIT}
    n = 0
    for label, (d, stored, _) in enumerate(classes):
        for part, k in PER_SPLIT.items():
            for _ in range(k):
                n += 1
                rel = pattern.format(d=d, n=n, part="test" if part == "test" else "train")
                write_image(image_dir / rel, n)
                split[part].append([rel, label, stored])
    split_file = KNOWN_DATASETS[name]["split_file"]
    (folder / split_file).write_text(json.dumps(split))
    images = [str((image_dir / e[0]).relative_to(root)) for s in split.values() for e in s]
    counts = {s: len(v) for s, v in split.items()}
    return Tree(name, [c for _, _, c in classes], counts, f"{folder.name}/{split_file}", images)


def _imagenet(root: Path, name: str) -> Tree:
    folder, image_dir = _dirs(root, name)
    _classnames_txt(folder)
    images = []
    for label, (wnid, _) in enumerate(WNIDS[:2]):
        for i in range(PER_SPLIT["train"]):
            images.append(image_dir / "train" / wnid / f"{wnid}_{i + 1}.JPEG")
        images.append(image_dir / "val" / wnid / f"ILSVRC2012_val_{label + 1:08d}.JPEG")
    for n, path in enumerate(images):
        write_image(path, n)
    (image_dir / "train" / WNIDS[0][0] / ".DS_Store").write_text("")  # hidden: not an image
    counts = {"train": 4, "val": 2, "test": 2}
    return Tree(name, [n for _, n in WNIDS[:2]], counts, "imagenet/classnames.txt",
                [str(p.relative_to(root)) for p in images])


def _fgvc_aircraft(root: Path, name: str) -> Tree:
    folder, image_dir = _dirs(root, name)
    variants = ["707-320", "Falcon 2000"]
    folder.mkdir(parents=True)
    (folder / "variants.txt").write_text("\n".join(variants) + "\n")
    images, n = [], 1034000
    for part, k in PER_SPLIT.items():
        lines = []
        for variant in variants:
            for _ in range(k):
                n += 1
                lines.append(f"{n:07d} {variant}")
                write_image(image_dir / f"{n:07d}.jpg", n)
                images.append(f"{folder.name}/images/{n:07d}.jpg")
        (folder / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")
    counts = {s: 2 * k for s, k in PER_SPLIT.items()}
    return Tree(name, variants, counts, "fgvc_aircraft/images_variant_test.txt", images)


def _test_only(root: Path, name: str) -> Tree:
    folder, image_dir = _dirs(root, name)
    _classnames_txt(folder)
    if name == "ImageNetV2":  # folders are label indices into classnames.txt
        classes = [(str(i), n) for i, (_, n) in enumerate(WNIDS)]
    else:  # sketch has every ImageNet class, A and R their own 200 (here: other subsets)
        classes = {"ImageNetSketch": WNIDS[:2], "ImageNetA": WNIDS[2:], "ImageNetR": WNIDS[1:3]}[
            name
        ]
    images = []
    for c, (d, _) in enumerate(classes):
        for i in range(TEST_ONLY):
            path = image_dir / d / f"{name.lower()}_{i}.jpeg"
            write_image(path, 10 * c + i)
            images.append(str(path.relative_to(root)))
    if name in ("ImageNetA", "ImageNetR"):
        (image_dir / "README.txt").write_text("not a class")  # ships with the archives
    counts = {"train": 0, "val": 0, "test": TEST_ONLY * len(classes)}
    return Tree(name, [n for _, n in classes], counts, f"{folder.name}/classnames.txt", images)


BUILDERS = {
    **dict.fromkeys(SPLIT_JSON_TREES, _split_json),
    "ImageNet": _imagenet,
    "FGVCAircraft": _fgvc_aircraft,
    **dict.fromkeys(["ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR"], _test_only),
}


def build_tree(root: Path, name: str) -> Tree:
    """Write the miniature of CoOp dataset ``name`` under data root ``root``."""
    return BUILDERS[name](root, name)


def dassl_reference(data: list[Datum], k: int) -> list[Datum]:
    """Dassl's generate_fewshot_dataset(repeat=False) written out, on the global `random`."""
    tracker: dict[int, list[Datum]] = {}
    for d in data:
        tracker.setdefault(d.label, []).append(d)
    out: list[Datum] = []
    for items in tracker.values():
        out.extend(random.sample(items, k) if len(items) >= k else items)
    return out
