# Shared helpers of the workflow: cross-key config checks, paths, the JSON parameter slices each
# rule passes to the `pdiff` CLI, and the report's inputs. No rules live here.
#
# Every `params:` entry of a rule holds exactly the config slice that rule depends on, serialised
# with sorted keys, so Snakemake's params rerun trigger reruns a job when, and only when, the config
# it reads changes (e.g. the ODE solver touches evaluate_diffusion and report, nothing else).

import ast
import functools
import hashlib
import json
import os
import re
from pathlib import Path

import yaml

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


def yaml_safe_load(path):
    with open(path) as f:
        return yaml.safe_load(f)


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
    if not protocols:
        raise WorkflowError(
            "config: every protocol is switched off (null); keep at least one of base2new, "
            "cross_dataset or domain_generalization."
        )
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

    if "cross_dataset" in protocols and "domain_generalization" in protocols:
        sources = {
            protocols[p]["source"] for p in ("cross_dataset", "domain_generalization")
        }
        if len(sources) > 1:
            raise WorkflowError(
                "config: protocols.cross_dataset.source and protocols.domain_generalization."
                f"source differ ({' vs '.join(sorted(sources))}); both protocols evaluate one "
                "all-class source run (ImageNet in the paper), so give them the same source."
            )

    off = set(cfg.get("ablation", {}).get("protocols", [])) - set(protocols)
    if off:
        raise WorkflowError(
            f"config: ablation.protocols lists {sorted(off)}, which `protocols` switches off; "
            f"list only configured protocols ({', '.join(protocols)})."
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
TRANSFER = ("cross_dataset", "domain_generalization")  # share the all-class source run
# zero-shot CLIP is no trained run: its rows come from evaluate_zeroshot whatever `methods` says.
TRAINED_METHODS = [m for m in config["methods"] if m != "zeroshot"]
GPU = config["gpu"]

# The world keys `pdiff pretrain` reads (the label space and image size; not the downstream cast,
# seed or image counts).
PRETRAIN_WORLD_KEYS = ("colours", "objects", "image_size")

MANIFEST = f"{DATA_ROOT}/manifest.json"
PRETRAINED = config["backbone"]["pretrained"]
# An open_clip pretrained tag (e.g. openai), not shipped/pretrain or a checkpoint path: the local
# fetch_weights rule caches it once and every compute job loads only that file.
IS_TAG = PRETRAINED not in ("shipped", "pretrain") and not re.search(
    r"[/\\]|\.(safetensors|pt|pth|bin)$", PRETRAINED
)
WEIGHTS_FILE = (
    f"{config['backbone']['weights_dir']}/{MODEL}/{PRETRAINED}.safetensors"
    if IS_TAG
    else None
)
BACKBONE_CKPT = f"{RESULTS}/backbone/{MODEL}.safetensors"
RUN = "{dataset}/{method}/{classes}/seed{seed}"
STORE = f"{RESULTS}/runs/{RUN}/{{ov}}/store.h5"
DIT = f"{RESULTS}/runs/{RUN}/{{ov}}/{{dv}}/dit.safetensors"

# ---------------------------------------------------------------------------------------------
# Settings of prompt diffusion (the `ablation` key): each override of one stage's section is a
# named variant (e.g. `steps=10`); "default" is the section as configured. A store depends on
# the overfit variant, a DiT on the overfit and diffusion variants, a diffusion evaluation on
# all three, so a new variant reuses everything upstream of its stage. Variants are compared
# one stage at a time around the defaults.
# ---------------------------------------------------------------------------------------------

DEFAULT = "default"
STAGES = ("overfit", "diffusion", "sampling")


def variant_name(override):
    return ",".join(f"{k}={override[k]}" for k in sorted(override) if k != "methods")


# stage -> variant name -> the override it applies; an entry's `methods` key only says which
# methods compare it (VARIANT_METHODS), it is no setting of the stage.
VARIANTS = {
    stage: {
        DEFAULT: {},
        **{
            variant_name(o): {k: v for k, v in o.items() if k != "methods"}
            for o in config.get("ablation", {}).get(stage, [])
        },
    }
    for stage in STAGES
}
VARIANT_METHODS = {
    (stage, variant_name(o)): o["methods"]
    for stage in STAGES
    for o in config.get("ablation", {}).get(stage, [])
    if "methods" in o
}


def stage_config(stage, variant, method):
    """The `stage` section for `method` (its `per_method` entry over the section), with
    `variant`'s override applied."""
    section = {k: v for k, v in config[stage].items() if k != "per_method"}
    return {
        **section,
        **config[stage].get("per_method", {}).get(method, {}),
        **VARIANTS[stage][variant],
    }


def check_variants():
    for stage in STAGES:
        for method in config[stage].get("per_method", {}):
            if method not in config["method_params"]:
                raise WorkflowError(
                    f"config: {stage}.per_method names {method!r}, which has no method_params "
                    f"entry; fix the name or add `method_params: {{{method}: {{...}}}}`."
                )
        for name, override in VARIANTS[stage].items():
            unknown = set(override) - set(config[stage]) - STAGE_KEYS[stage]
            if unknown or "per_method" in override:
                raise WorkflowError(
                    f"config: ablation.{stage} entry {override} sets unknown key(s) "
                    f"{sorted(unknown | ({'per_method'} & set(override)))}; use keys of the "
                    f"`{stage}` section."
                )
            for method in TRAINED_METHODS:
                merged = stage_config(stage, name, method)
                try:
                    validate({**config, stage: merged}, SCHEMA)
                except WorkflowError as e:
                    where = (
                        f"ablation.{stage} entry {override}"
                        if override
                        else f"{stage}.per_method.{method}"
                    )
                    raise WorkflowError(f"config: {where}: {e}")
    for (stage, name), methods in VARIANT_METHODS.items():
        unknown = set(methods) - set(TRAINED_METHODS)
        if unknown:
            raise WorkflowError(
                f"config: ablation.{stage} entry {name} lists methods {sorted(unknown)} that "
                f"`methods` does not train ({', '.join(TRAINED_METHODS)})."
            )


# The keys each section may hold (the schema's properties), for the check above.
SCHEMA = os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml")
STAGE_KEYS = {
    stage: set(props)
    for stage, props in (
        (s, yaml_safe_load(SCHEMA)["properties"][s]["properties"]) for s in STAGES
    )
}
check_variants()

# The protocols the settings are compared on (`ablation.protocols`; default: base-to-new, else
# the transfer protocols). Cross-dataset and DG share the all-class source run, whose one
# evaluation job covers every transfer target.
ABLATION_PROTOCOLS = config.get("ablation", {}).get("protocols") or (
    ["base2new"] if "base2new" in PROTOCOLS else [p for p in TRANSFER if p in PROTOCOLS]
)


def ablated(classes):
    """Whether the settings are compared on the runs training on `classes` (base or all)."""
    if classes == "base":
        return "base2new" in ABLATION_PROTOCOLS
    return any(p in ABLATION_PROTOCOLS for p in TRANSFER)


# (overfit, diffusion, sampling) variants whose diffusion evaluation the report shows: the
# defaults, then each variant with the other two stages at their defaults.
COMBOS = [(DEFAULT, DEFAULT, DEFAULT)] + [
    tuple(name if s == stage else DEFAULT for s in STAGES)
    for stage in STAGES
    for name in VARIANTS[stage]
    if name != DEFAULT
]


def compares(combo, method):
    """Whether `method` is compared under the (overfit, diffusion, sampling) variants `combo`."""
    return all(
        method in VARIANT_METHODS.get((stage, name), [method])
        for stage, name in zip(STAGES, combo)
    )


def alternation(names):
    """A regex matching exactly one of `names` (never matching anything when empty)."""
    names = sorted(set(names), key=lambda n: (-len(n), n))
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


wildcard_constraints:
    ov=alternation(VARIANTS["overfit"]),
    dv=alternation(VARIANTS["diffusion"]),
    sv=alternation(VARIANTS["sampling"]),
    dataset=alternation(config["datasets"]),
    method=alternation(TRAINED_METHODS),
    classes="base|all",
    seed=r"\d+",
    shots=r"\d+",
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
    pretrained = BACKBONE_CKPT if PRETRAIN else WEIGHTS_FILE or PRETRAINED
    spec = {"model": MODEL, "pretrained": pretrained}
    if config["backbone"].get("amp"):  # only when on: default params stay as they were
        spec["amp"] = True
    return to_json(spec)


def method_json(method):
    return to_json({**config["method_params"][method], **compute_params()})


def compute_params():
    """The `compute` section for the --params of every job that encodes images x classes texts
    (train, overfit, fit_diffusion, evaluate_*); nothing when the config leaves it out, so the
    params of a config without it stay as they were."""
    return {"compute": config["compute"]} if "compute" in config else {}


# ---------------------------------------------------------------------------------------------
# Code fingerprints: editing a stage's module reruns that stage (and, through its updated output,
# everything downstream), like a params change. Each rule that runs pdiff code passes
# `code=code_fingerprint(...)` among its params, naming the modules that decide its *result*:
#
#   prepare            data/synthetic.py                 the world's rendering
#   pretrain           pretrain.py, data/synthetic.py    the recipe and its caption/image draws
#   check_data         check_data.py, data/coop.py, data/layouts.py
#   fewshot            data/fewshot.py, data/coop.py, data/layouts.py   (readers decide the draw)
#   train              train.py, the method's modules    its model and loss (method_modules)
#   overfit            overfit.py, store.py
#   fit_diffusion      fit_diffusion.py, sampled_softmax.py, diffusion/ except sampler.py (DiT,
#                      objective, normaliser, trainer; the sampler is used only by evaluation)
#   evaluate_baseline  evaluate.py
#   evaluate_diffusion evaluate.py, diffusion/sampler.py
#   evaluate_zeroshot  evaluate.py, zeroshot's modules   (method_modules("zeroshot"))
#   report             report/
#
# Deliberately left out: the plumbing every stage shares (cli.py, utils.py, errors.py,
# resume.py, inputs.py, checkpoint.py, backbone.py, prefix_sharing.py, budget.py, data/images.py,
# data/templates.py, the method registry methods/__init__.py). A change there would rerun the
# whole study (days on a cluster) for what is almost always a refactor, and their behaviour is
# pinned by unit tests (e.g. prefix sharing and the truncated text encoder are exact); after a
# change there that does alter results, force the affected rules with `snakemake -R <rule>`.
# A method counts as its module pdiff/methods/<name>.py plus the pdiff/methods modules it
# imports (base.py, text.py, ...), so editing maple.py retrains MaPLe runs only, and editing
# text.py every textual method and zero-shot CLIP. fetch_weights has no fingerprint: it only
# downloads weights. Only `*.py` files count; paths are relative to the
# repository root (the Snakefile's folder); folders are hashed recursively in sorted order.
# ---------------------------------------------------------------------------------------------


def code_fingerprint(*paths):
    """sha256 over the given source files and folders (their *.py files, recursively)."""
    root = Path(workflow.basedir)
    files = []
    for rel in paths:
        path = root / rel
        if path.is_dir():
            files += sorted(path.rglob("*.py"))
        elif path.is_file():
            files.append(path)
        else:
            raise WorkflowError(f"code_fingerprint: {path} does not exist")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@functools.cache
def method_modules(method):
    """pdiff/methods/<method>.py and, transitively, the pdiff/methods modules it imports. A method
    registered under another module name falls back to the whole folder (still correct, coarser).
    """
    root = Path(workflow.basedir)
    folder = root / "pdiff" / "methods"
    todo, seen = [folder / f"{method}.py"], set()
    if not todo[0].is_file():
        return ("pdiff/methods",)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "pdiff.methods."
            ):
                todo.append(folder / f"{node.module.rsplit('.', 1)[1]}.py")
    return tuple(sorted(p.relative_to(root).as_posix() for p in seen))


def train_fingerprint(wildcards):
    return code_fingerprint("pdiff/train.py", *method_modules(wildcards.method))


def data_root(wildcards):
    """The data root for --data-root (a function: a hardcoded input prefix trips the linter)."""
    return DATA_ROOT


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def check_path(name):
    return f"{RESULTS}/data/check/{name}.json"


def dataset_input(name):
    """What a job reading dataset `name` depends on: its check_data report, so a missing or
    broken dataset stops the workflow in seconds, before any training starts."""
    return check_path(name)


def backbone_input(wildcards):
    """The checkpoint file jobs load when the workflow makes it: the pretrained demo model
    (pretrained: pretrain) or the cached open_clip weights (pretrained: an open_clip tag).
    """
    if PRETRAIN:
        return {"backbone": BACKBONE_CKPT}
    if WEIGHTS_FILE:
        return {"weights": WEIGHTS_FILE}
    return {}


def fewshot_path(dataset, seed):
    return f"{RESULTS}/fewshot/{dataset}/shots{SHOTS}_seed{seed}.json"


def run_dir(dataset, method, classes, seed):
    return f"{RESULTS}/runs/{dataset}/{method}/{classes}/seed{seed}"


def transfer_targets():
    """Targets of the all-class source run: the source itself, then the cross-dataset and
    domain-generalisation targets (both protocols share one source, checked above)."""
    targets = []
    for protocol in TRANSFER:
        if protocol in PROTOCOLS:
            targets += [PROTOCOLS[protocol]["source"]] + PROTOCOLS[protocol]["targets"]
    return list(dict.fromkeys(targets))


def eval_sets(dataset, classes):
    """(target, split) pairs one trained run is evaluated on: its own base and new classes for a
    base-class run, every transfer target for the all-class source run."""
    if classes == "base":
        return [(dataset, "base"), (dataset, "new")]
    return [(target, "all") for target in transfer_targets()]


def zeroshot_sets(dataset):
    """(target, split) pairs zero-shot CLIP is evaluated on for one dataset."""
    sets = []
    if "base2new" in PROTOCOLS and dataset in PROTOCOLS["base2new"]["datasets"]:
        sets += [(dataset, "base"), (dataset, "new")]
    if dataset in transfer_targets():
        sets.append((dataset, "all"))
    return sets


def sets_json(sets):
    """The --sets argument: catalogue entries and splits of `sets`."""
    return to_json(
        [
            {"dataset": {"name": t, **config["datasets"][t]}, "split": split}
            for t, split in sets
        ]
    )


def sets_input(sets):
    return list(
        dict.fromkeys(path for t, _ in sets for path in [dataset_input(t)] if path)
    )


def eval_path(dataset, method, classes, seed, mode, combo=(DEFAULT,) * 3):
    """eval/baseline.json, or eval/diffusion/<overfit>/<diffusion>/<sampling>.json."""
    run = run_dir(dataset, method, classes, seed)
    if mode == "baseline":
        return f"{run}/eval/baseline.json"
    return f"{run}/eval/diffusion/{'/'.join(combo)}.json"


def zeroshot_path(dataset):
    return f"{RESULTS}/zeroshot/{dataset}.json"


def report_inputs(wildcards=None):
    """Every evaluation bundle the protocols imply, in a stable order."""
    runs = []
    if "base2new" in PROTOCOLS:
        runs += [(d, "base") for d in PROTOCOLS["base2new"]["datasets"]]
    if transfer_targets():
        runs.append((transfer_targets()[0], "all"))
    datasets = [d for d, _ in runs] + transfer_targets()
    paths = [zeroshot_path(d) for d in dict.fromkeys(datasets)]
    for m in TRAINED_METHODS:
        for s in SEEDS:
            for d, classes in runs:
                paths.append(eval_path(d, m, classes, s, "baseline"))
                combos = COMBOS if ablated(classes) else COMBOS[:1]
                paths += [
                    eval_path(d, m, classes, s, "diffusion", c)
                    for c in combos
                    if compares(c, m)
                ]
    return paths


def diagnostics_inputs(wildcards=None):
    """The held-out diagnostics of every default DiT (one per trained run)."""
    runs = []
    if "base2new" in PROTOCOLS:
        runs += [(d, "base") for d in PROTOCOLS["base2new"]["datasets"]]
    if transfer_targets():
        runs.append((transfer_targets()[0], "all"))
    return [
        f"{run_dir(d, m, classes, s)}/{DEFAULT}/{DEFAULT}/dit.json"
        for m in TRAINED_METHODS
        for s in SEEDS
        for d, classes in runs
    ]


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
    if COMBOS[1:]:
        files["ablation_csv"] = (
            f"{REPORT_DIR}/ablation.csv",
            "../report/ablation.rst",
            "Ablations",
        )
        files["ablation_md"] = (f"{REPORT_DIR}/ablation.md", None, "Ablations")
        files["ode_steps_png"] = (
            f"{REPORT_DIR}/figures/ode_steps.png",
            "../report/ode_steps_figure.rst",
            "Ablations",
        )
    if TRAINED_METHODS:
        files["diagnosis_csv"] = (
            f"{REPORT_DIR}/diagnosis.csv",
            "../report/diagnosis.rst",
            "Diagnosis",
        )
        files["diagnosis_md"] = (f"{REPORT_DIR}/diagnosis.md", None, "Diagnosis")
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
