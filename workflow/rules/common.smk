# Shared helpers of the workflow: cross-key config checks, paths, the JSON parameter slices each
# rule passes to the `pdiff` CLI, and the report's inputs. No rules live here.
#
# Every `params:` entry of a rule holds exactly the config slice that rule depends on, serialised
# with sorted keys, so Snakemake's params rerun trigger reruns a job when, and only when, the config
# it reads changes (e.g. the ODE solver touches evaluate_diffusion and report, nothing else).

import json
import os
import re

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

# ---------------------------------------------------------------------------------------------
# Cross-key checks (the JSON schema validated the shape of every key already)
# ---------------------------------------------------------------------------------------------


def check_config(cfg):
    """Raise a WorkflowError naming the bad key and the fix for what the schema cannot check."""
    catalogue = cfg["datasets"]
    known = ", ".join(sorted(catalogue))

    def need_dataset(name, key):
        if name not in catalogue:
            raise WorkflowError(
                f"config: {key} names dataset {name!r}, which is not in the `datasets` catalogue "
                f"(known: {known}). Add an entry `datasets: {{{name}: {{folder: ..., "
                f"split_file: ..., template: ...}}}}` or fix the name in {key}."
            )

    protocols = cfg["protocols"]
    if "base2new" in protocols:
        for name in protocols["base2new"]["datasets"]:
            need_dataset(name, "protocols.base2new.datasets")
    for protocol in ("cross_dataset", "domain_generalization"):
        if protocol in protocols:
            need_dataset(protocols[protocol]["source"], f"protocols.{protocol}.source")
            for name in protocols[protocol]["targets"]:
                need_dataset(name, f"protocols.{protocol}.targets")

    for method in cfg["methods"]:
        if method != "zeroshot" and method not in cfg["method_params"]:
            raise WorkflowError(
                f"config: methods lists {method!r} but method_params has no {method!r} entry. "
                f"Add `method_params: {{{method}: {{...}}}}` (see config/README.md) or remove "
                f"{method!r} from methods."
            )

    diffusion = cfg["diffusion"]
    if diffusion["width"] % diffusion["heads"]:
        raise WorkflowError(
            f"config: diffusion.width ({diffusion['width']}) must be divisible by "
            f"diffusion.heads ({diffusion['heads']})."
        )

    synthetic = cfg["data"]["source"] == "synthetic"
    pretrain = cfg["backbone"]["pretrained"] == "pretrain"
    if (synthetic or pretrain) and "world" not in cfg:
        why = (
            "data.source is synthetic"
            if synthetic
            else "backbone.pretrained is pretrain"
        )
        raise WorkflowError(
            f"config: {why}, which needs the `world` section (see config/README.md)."
        )
    if pretrain and "pretrain" not in cfg["backbone"]:
        raise WorkflowError(
            "config: backbone.pretrained is pretrain, which needs the backbone.pretrain recipe "
            "(seed, steps, batch_size, lr, weight_decay, warmup)."
        )


check_config(config)


# ---------------------------------------------------------------------------------------------
# Constants derived from the config
# ---------------------------------------------------------------------------------------------

RESULTS = config["results"]
DATA_ROOT = config["data"]["root"]
SYNTHETIC = config["data"]["source"] == "synthetic"
PRETRAIN = config["backbone"]["pretrained"] == "pretrain"
MODEL = config["backbone"]["model"]
SHOTS = config["shots"]
SEEDS = config["seeds"]
PROTOCOLS = config["protocols"]
# zero-shot CLIP is no trained run: its rows come from evaluate_zeroshot whatever `methods` says.
TRAINED_METHODS = [m for m in config["methods"] if m != "zeroshot"]
GPU = config["gpu"]

# The world keys `pdiff pretrain` reads (the label space and image size; not the downstream cast,
# seed or image counts).
PRETRAIN_WORLD_KEYS = ("colours", "objects", "image_size")

MANIFEST = f"{DATA_ROOT}/manifest.json"
BACKBONE_CKPT = f"{RESULTS}/backbone/{MODEL}.safetensors"
RUN = "{dataset}/{method}/{classes}/seed{seed}"


def alternation(names):
    """A regex matching exactly one of `names` (never matching anything when empty)."""
    names = sorted(set(names), key=lambda n: (-len(n), n))
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


wildcard_constraints:
    dataset=alternation(config["datasets"]),
    target=alternation(config["datasets"]),
    method=alternation(TRAINED_METHODS),
    classes="base|all",
    seed=r"\d+",
    shots=r"\d+",
    split="base|new|all",
    mode="baseline|diffusion",
    model=re.escape(MODEL),


# ---------------------------------------------------------------------------------------------
# Parameter slices (JSON object strings handed to the CLI)
# ---------------------------------------------------------------------------------------------


def to_json(obj):
    """Canonical JSON: sorted keys, so equal config gives an equal params string."""
    return json.dumps(obj, sort_keys=True)


def dataset_json(name):
    return to_json({"name": name, **config["datasets"][name]})


def backbone_json():
    pretrained = BACKBONE_CKPT if PRETRAIN else config["backbone"]["pretrained"]
    return to_json({"model": MODEL, "pretrained": pretrained})


def method_json(method):
    return to_json(config["method_params"][method])


def data_root(wildcards):
    """The data root for --data-root (a function: a hardcoded prefix of an input trips the linter)."""
    return DATA_ROOT


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


_UNPLANNED_DATA = set()


def dataset_input(name):
    """The file a job reading dataset `name` depends on: the world's manifest for the synthetic
    demo (written by `prepare`), else the dataset's split file already on disk.

    A dry run plans without datasets that are not on disk yet (e.g. `snakemake -n` of the
    benchmark on a laptop), with one warning per dataset; a real run then stops with Snakemake's
    missing-input error naming the split file."""
    if SYNTHETIC:
        return MANIFEST
    entry = config["datasets"][name]
    path = f"{DATA_ROOT}/{entry['folder']}/{entry['split_file']}"
    if workflow.dryrun and not os.path.exists(path):
        if name not in _UNPLANNED_DATA:
            _UNPLANNED_DATA.add(name)
            logger.warning(
                f"dataset {name}: {path} is not on disk; the dry run plans without it, a real "
                f"run needs it (data.root, datasets.{name}.folder/split_file)."
            )
        return []
    return path


def backbone_input(wildcards):
    """The pretrained checkpoint when the workflow regenerates it (pretrained: pretrain)."""
    return {"backbone": BACKBONE_CKPT} if PRETRAIN else {}


def fewshot_path(dataset, seed):
    return f"{RESULTS}/fewshot/{dataset}/shots{SHOTS}_seed{seed}.json"


def run_dir(dataset, method, classes, seed):
    return f"{RESULTS}/runs/{dataset}/{method}/{classes}/seed{seed}"


def eval_path(dataset, method, classes, seed, target, split, mode):
    return (
        f"{run_dir(dataset, method, classes, seed)}/eval/{target}_{split}_{mode}.json"
    )


def zeroshot_path(target, split):
    return f"{RESULTS}/zeroshot/{target}_{split}.json"


def report_inputs(wildcards=None):
    """Every evaluation JSON the protocols imply (each once, in a stable order)."""
    paths = []
    modes = ("baseline", "diffusion")
    if "base2new" in PROTOCOLS:
        for d in PROTOCOLS["base2new"]["datasets"]:
            paths += [zeroshot_path(d, split) for split in ("base", "new")]
            for m in TRAINED_METHODS:
                for s in SEEDS:
                    for split in ("base", "new"):
                        paths += [
                            eval_path(d, m, "base", s, d, split, mo) for mo in modes
                        ]
    for protocol in ("cross_dataset", "domain_generalization"):
        if protocol not in PROTOCOLS:
            continue
        source = PROTOCOLS[protocol]["source"]
        targets = [source] + PROTOCOLS[protocol]["targets"]
        paths += [zeroshot_path(t, "all") for t in targets]
        for m in TRAINED_METHODS:
            for s in SEEDS:
                for t in targets:
                    paths += [
                        eval_path(source, m, "all", s, t, "all", mo) for mo in modes
                    ]
    return list(dict.fromkeys(paths))


# ---------------------------------------------------------------------------------------------
# Report outputs
# ---------------------------------------------------------------------------------------------

REPORT_DIR = f"{RESULTS}/report"


def report_files():
    """name -> (path, caption or None, category): what `pdiff report` writes for these protocols."""
    files = {}
    for protocol, category in (
        ("base2new", "Base-to-new"),
        ("cross_dataset", "Cross-dataset"),
        ("domain_generalization", "Domain generalisation"),
    ):
        if protocol in PROTOCOLS:
            caption = f"../report/{protocol}.rst"
            files[f"{protocol}_csv"] = (
                f"{REPORT_DIR}/{protocol}.csv",
                caption,
                category,
            )
            files[f"{protocol}_md"] = (f"{REPORT_DIR}/{protocol}.md", None, category)
    if "base2new" in PROTOCOLS:
        files["base2new_png"] = (
            f"{REPORT_DIR}/figures/base2new.png",
            "../report/base2new_figure.rst",
            "Base-to-new",
        )
    if "cross_dataset" in PROTOCOLS or "domain_generalization" in PROTOCOLS:
        files["transfer_png"] = (
            f"{REPORT_DIR}/figures/transfer.png",
            "../report/transfer_figure.rst",
            "Transfer",
        )
    files["summary"] = (f"{REPORT_DIR}/summary.json", None, "Summary")
    return files


def report_outputs():
    """Named outputs of the report rule; tables' CSVs and figures flagged for `snakemake --report`.
    Captions are relative to workflow/rules/, where the report rule is defined."""
    return {
        name: report(path, caption=caption, category=category) if caption else path
        for name, (path, caption, category) in report_files().items()
    }


def final_outputs():
    return [path for path, _, _ in report_files().values()]
