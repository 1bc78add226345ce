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

from pdiff.cost import model as cost
from pdiff.cost.workflow import config_estimator


def yaml_safe_load(path):
    with open(path) as f:
        return yaml.safe_load(f)


# ---------------------------------------------------------------------------------------------
# Cross-key checks (the JSON schema validated the shape of every key already)
# ---------------------------------------------------------------------------------------------


# backbone.pretrained for seeded random weights (pdiff.backbone.RANDOM)
RANDOM_WEIGHTS = "random"


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
    kind = cfg.get("world", {}).get("kind", "synthetic")
    if pretrain and kind == "rehearsal":
        raise WorkflowError(
            "config: backbone.pretrained is pretrain, which draws its images from the demo "
            "world, but world.kind is rehearsal; use pretrained: random or real weights instead."
        )

    if kind == "rehearsal" and cfg["world"]["min_side"] > cfg["world"]["max_side"]:
        raise WorkflowError(
            f"config: world.min_side ({cfg['world']['min_side']}) exceeds world.max_side "
            f"({cfg['world']['max_side']}); give the shorter image side's range low to high."
        )

    # Random weights or fake data make a rehearsal, never a study: only a config marked so.
    fake = []
    if cfg["backbone"]["pretrained"] == RANDOM_WEIGHTS:
        fake.append("backbone.pretrained is random (untrained weights)")
    if synthetic and kind == "rehearsal":
        fake.append("world.kind is rehearsal (fake datasets)")
    if fake and not cfg["rehearsal"]:
        raise WorkflowError(
            f"config: {' and '.join(fake)} but the config is not marked `rehearsal: true`; "
            "use real weights and data for a study, or add `rehearsal: true` for a rehearsal "
            "(config/rehearsal.yaml)."
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
# The world keys the rehearsal world reads: not the demo world's, which config/config.yaml merges
# into every overlay's `world` (a demo world, with no `kind`, is passed whole and unchanged).
REHEARSAL_WORLD_KEYS = (
    "kind",
    "seed",
    "train_per_class",
    "val_per_class",
    "test_per_class",
    "min_side",
    "max_side",
)

MANIFEST = f"{DATA_ROOT}/manifest.json"
PRETRAINED = config["backbone"]["pretrained"]
# An open_clip pretrained tag (e.g. openai), not shipped/pretrain/random or a checkpoint path: the
# local fetch_weights rule caches it once and every compute job loads only that file.
IS_TAG = PRETRAINED not in ("shipped", "pretrain", RANDOM_WEIGHTS) and not re.search(
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


def section_config(stage):
    """The `stage` section as configured, without its per-method entries."""
    return {k: v for k, v in config[stage].items() if k != "per_method"}


def stage_config(stage, variant, method):
    """The `stage` section for `method` (its `per_method` entry over the section), with
    `variant`'s override applied; a preset's folder name gives that preset's section."""
    if variant not in VARIANTS[stage]:
        return PRESET_STAGES[stage, method][variant]
    return {
        **section_config(stage),
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

# ---------------------------------------------------------------------------------------------
# Presets (the `presets` key): whole settings of prompt diffusion evaluated beside the
# configured one, each a row of its own in the report. A preset drops the sections' per-method
# entries (pdiff's choices per host) and sets its keys over each section. Each stage's output
# goes where an equal setting's goes: `default` when the stage's config equals the method's
# default, else the folder named by the keys in which it differs, the name an ablation entry
# changing just those keys gets. So a preset computes only the stages it changes, per method,
# and shares a store, DiT or evaluation with any equal setting.
# ---------------------------------------------------------------------------------------------

# The paper's method (arXiv 2410.20164): per-sample overfitting with the host's own loss (no
# KL anchor), a DiT trained on the whole store with the diffusion loss alone (no classification
# term, no hold-out), sampling from Gaussian prompts in five ODE steps. Values spelled as the
# ablation entries that set them (kl_weight 0.0), so equal settings get equal folder names.
PRESET_SETTINGS = {
    "paper": {
        "overfit": {"kl_weight": 0.0},
        "diffusion": {"cls_weight": 0.0, "holdout": 0.0},
        "sampling": {"start": "noise", "steps": 5},
    },
}
PRESETS = config["presets"]


def preset_stage(preset, stage, method):
    """(folder name, config) of `preset`'s `stage` section for `method`."""
    default = stage_config(stage, DEFAULT, method)
    # a key only a per-method entry sets (cls_batch) takes its absent value, null
    setting = {
        **dict.fromkeys(default),
        **section_config(stage),
        **PRESET_SETTINGS[preset][stage],
    }
    diff = {k: v for k, v in setting.items() if v != default.get(k)}
    if not diff:
        return DEFAULT, default
    name = variant_name(diff)
    if name in VARIANTS[stage] and stage_config(stage, name, method) != setting:
        raise WorkflowError(
            f"config: preset {preset!r} and ablation.{stage} entry {name} share a folder name "
            f"but differ for {method}; change the ablation entry."
        )
    return name, setting


def preset_tables():
    """(stage, method) -> folder name -> config of every preset's stage output, and preset ->
    method -> its (overfit, diffusion, sampling) folders; each config validated."""
    stages = {(stage, method): {} for stage in STAGES for method in TRAINED_METHODS}
    combos = {preset: {} for preset in PRESETS}
    for preset in PRESETS:
        for method in TRAINED_METHODS:
            combo = []
            for stage in STAGES:
                name, setting = preset_stage(preset, stage, method)
                try:
                    validate({**config, stage: setting}, SCHEMA)
                except WorkflowError as e:
                    raise WorkflowError(
                        f"config: preset {preset!r}, {stage} of {method}: {e}"
                    )
                stages[stage, method][name] = setting
                combo.append(name)
            combos[preset][method] = tuple(combo)
    return stages, combos


PRESET_STAGES, PRESET_COMBOS = preset_tables()


def stage_names(stage):
    """Every folder name of `stage`'s outputs: the ablation's variants and the presets'."""
    return set(VARIANTS[stage]).union(
        *(PRESET_STAGES[stage, method] for method in TRAINED_METHODS)
    )


# A run's training recipe: `method_params.<method>` less its override keys, then the override of
# the run's protocol (`per_protocol`), then that of its training dataset (`per_dataset`). The
# protocol follows from the class set: a base-class run is base-to-new's; the one all-class source
# run is `transfer`, since cross-dataset and domain generalisation evaluate that same run (as in
# the papers, whose DG numbers come from the cross-dataset ImageNet model), so one recipe serves
# both. A method without overrides gives the same params as before they existed.
RECIPE_OVERRIDES = ("per_protocol", "per_dataset")
PROTOCOL_RECIPE = {"base": "base2new", "all": "transfer"}


def method_params(method, dataset, classes):
    params = config["method_params"][method]
    return {
        **{k: v for k, v in params.items() if k not in RECIPE_OVERRIDES},
        **params.get("per_protocol", {}).get(PROTOCOL_RECIPE[classes], {}),
        **params.get("per_dataset", {}).get(dataset, {}),
    }


def check_recipes():
    """Each protocol's and dataset's recipe of a method validates as that method's block."""
    for method, params in config["method_params"].items():
        shared = {k: v for k, v in params.items() if k not in RECIPE_OVERRIDES}
        for where in RECIPE_OVERRIDES:
            for key, override in params.get(where, {}).items():
                name = f"method_params.{method}.{where}.{key}"
                if where == "per_dataset" and key not in config["datasets"]:
                    raise WorkflowError(
                        f"config: {name} names a dataset that is not in the `datasets` "
                        "catalogue; fix the name or add the dataset."
                    )
                nested = sorted(set(RECIPE_OVERRIDES) & set(override))
                if nested:
                    raise WorkflowError(
                        f"config: {name} sets {nested}; overrides do not nest, set the keys "
                        "of the recipe itself."
                    )
                merged = {**config["method_params"], method: {**shared, **override}}
                try:
                    validate({**config, "method_params": merged}, SCHEMA)
                except WorkflowError as e:
                    raise WorkflowError(f"config: {name}: {e}")


check_recipes()

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
    ov=alternation(stage_names("overfit")),
    dv=alternation(stage_names("diffusion")),
    sv=alternation(stage_names("sampling")),
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


def world_json():
    world = config["world"]
    if world.get("kind") == "rehearsal":
        world = {k: world[k] for k in REHEARSAL_WORLD_KEYS}
    return to_json(world)


def method_json(method, dataset, classes):
    return to_json({**method_params(method, dataset, classes), **compute_params()})


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
#   prepare            data/synthetic.py                 the demo world's rendering, or for
#                      the rehearsal world (world.kind rehearsal) data/rehearsal.py,
#                      data/rehearsal_names.py and the layouts it writes (data/catalogue.py,
#                      data/readers.py): WORLD_MODULES
#   pretrain           pretrain.py, data/synthetic.py    the recipe and its caption/image draws
#   check_data         check_data.py, data/catalogue.py, data/readers.py
#   fewshot            data/fewshot.py, data/catalogue.py, data/readers.py (readers decide
#                      the draw)
#   train              host_prompt.py, the method's modules  its model and loss (method_modules)
#   overfit            overfit.py, store.py
#   fit_diffusion      fit_dit.py, sampled_softmax.py, diffusion/ except sampler.py (DiT,
#                      objective, normaliser, trainer, DiffusionConfig's defaults; the sampler
#                      is used only by evaluation)
#   evaluate_baseline  evaluate.py
#   evaluate_diffusion evaluate.py, diffusion/sampler.py
#   evaluate_zeroshot  evaluate.py, zeroshot's modules   (method_modules("zeroshot"))
#   report             report/
#
# Each section's defaults live in its stage's modules (OverfitConfig in overfit.py, SamplingConfig
# in diffusion/sampler.py, TrainConfig and the methods' in methods/), so they are fingerprinted
# with it; config.py, which only reads and checks sections, is plumbing.
# Deliberately left out: the plumbing every stage shares (cli.py, stages/ (argument parsing),
# utils.py, errors.py, config.py, resume.py, inputs.py, checkpoint.py, backbone.py,
# prefix_sharing.py, budget.py, data/images.py, data/templates.py, the method registry
# methods/__init__.py). A change there would rerun the
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


# The modules each kind of world is written by (a demo config has no world.kind).
WORLD_MODULES = {
    "synthetic": ("pdiff/data/synthetic.py",),
    "rehearsal": (
        "pdiff/data/rehearsal.py",
        "pdiff/data/rehearsal_names.py",
        "pdiff/data/catalogue.py",
        "pdiff/data/readers.py",
    ),
}


def world_fingerprint():
    return code_fingerprint(*WORLD_MODULES[config["world"].get("kind", "synthetic")])


def train_fingerprint(wildcards):
    return code_fingerprint("pdiff/host_prompt.py", *method_modules(wildcards.method))


def data_root(wildcards):
    """The data root for --data-root (a function: a hardcoded input prefix trips the linter)."""
    return DATA_ROOT


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


# check_data's reports, which the cost model reads too
CHECK_DIR = f"{RESULTS}/data/check"


def check_path(name):
    return f"{CHECK_DIR}/{name}.json"


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


# The frozen-feature caches: one per test split and one per few-shot draw, whatever the
# method, seed or mode that reads them.
TEST_FEATURES = f"{RESULTS}/features/{{dataset}}/test.h5"
FEWSHOT_FEATURES = f"{RESULTS}/features/{{dataset}}/shots{SHOTS}_seed{{seed}}.h5"
AUGMENT = config["augment"] if config["augment"]["enabled"] else None


def augment_arg(wildcards=None):
    """`--augment <json>` when training augmentation is on (else nothing: the params of a
    config without it stay as they were)."""
    return f"--augment '{to_json(AUGMENT)}'" if AUGMENT else ""


def limit_arg(key):
    """`--max-images N` for the `limit` key (else nothing: params stay as they were)."""
    n = config.get("limit", {}).get(key)
    return f"--max-images {n}" if n else ""


def test_features(sets):
    """The test-split feature caches the evaluation of `sets` reads, by dataset name."""
    return {
        t: TEST_FEATURES.format(dataset=t) for t in dict.fromkeys(t for t, _ in sets)
    }


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
                paths += [
                    eval_path(d, m, classes, s, "diffusion", PRESET_COMBOS[p][m])
                    for p in PRESETS
                ]
    return list(dict.fromkeys(paths))  # a preset's evaluation may be another setting's


def report_params():
    """What the report reads besides the evaluations: the protocols, methods and seeds, and each
    preset's (overfit, diffusion, sampling) folders per method (only with presets, so a config
    without them keeps its report params)."""
    params = {
        "protocols": config["protocols"],
        "methods": config["methods"],
        "seeds": config["seeds"],
        "ablation_protocols": ABLATION_PROTOCOLS,
        "reference": config["report"]["reference"],
    }
    if PRESETS:
        params["presets"] = {
            p: {m: dict(zip(STAGES, combo)) for m, combo in combos.items()}
            for p, combos in PRESET_COMBOS.items()
        }
    return params


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


# ---------------------------------------------------------------------------------------------
# Resources from the cost model (pdiff/cost/model.py, torch-free; DESIGN.md §9): each compute
# job's runtime, mem_mb and, on a GPU, threads follow from its dataset (images, classes), method
# and stage settings, with the `cost` key's margin. Throughputs come from `cost.throughputs`
# (measured by `pdiff plan-cost --measure-only`), else from FLOP-count assumptions. The local
# rules (data checks, draws, weights, report) keep fixed, small resources. On a CPU (`gpu: 0`)
# threads stay the rules' own, sized for the 2-core demo.
# ---------------------------------------------------------------------------------------------


ESTIMATOR = config_estimator(config, Path(CHECK_DIR))


def cost_job(name, wildcards):
    """The cost model's description of one job of rule `name` (the config its params hold)."""
    limit = config.get("limit", {})
    common = dict(
        shots=SHOTS,
        eval_batch=config["evaluation"]["batch_size"],
        max_train=limit.get("train_images"),
        max_test=limit.get("test_images"),
    )
    if name == "features_test":
        return cost.Job(name, dataset=wildcards.dataset, **common)
    if name == "features_fewshot":
        views = AUGMENT["views"] if AUGMENT else 0
        return cost.Job(name, dataset=wildcards.dataset, views=views, **common)
    if name == "evaluate_zeroshot":
        sets = tuple(zeroshot_sets(wildcards.dataset))
        return cost.Job(name, method="zeroshot", sets=sets, **common)
    run = dict(
        dataset=wildcards.dataset,
        method=wildcards.method,
        classes=wildcards.classes,
        recipe=method_params(wildcards.method, wildcards.dataset, wildcards.classes),
        **common,
    )
    if name == "train":
        return cost.Job(name, augment=bool(AUGMENT), **run)
    if name == "overfit":
        stage = stage_config("overfit", wildcards.ov, wildcards.method)
        return cost.Job(name, stage=stage, **run)
    if name == "fit_diffusion":
        stage = stage_config("diffusion", wildcards.dv, wildcards.method)
        return cost.Job(name, stage=stage, **run)
    sets = tuple(eval_sets(wildcards.dataset, wildcards.classes))
    if name == "evaluate_baseline":
        return cost.Job(name, sets=sets, **run)
    sampling = stage_config("sampling", wildcards.sv, wildcards.method)
    return cost.Job(name, sets=sets, sampling=sampling, **run)


def job_threads(name, cpu):
    """`cpu` threads on a CPU; on a GPU, one plus the loader workers the job needs."""

    def threads(wildcards):
        return ESTIMATOR.threads(cost_job(name, wildcards)) if GPU else cpu

    return threads


def job_runtime(name):
    """Minutes to ask for (a retry asks for more)."""

    def runtime(wildcards, threads, attempt):
        return ESTIMATOR.runtime(cost_job(name, wildcards), threads, attempt)

    return runtime


def job_mem_mb(name):
    """Host memory to ask for, in MB (a retry asks for more)."""

    def mem_mb(wildcards, threads, attempt):
        return ESTIMATOR.mem_mb(cost_job(name, wildcards), threads, attempt)

    return mem_mb


# ---------------------------------------------------------------------------------------------
# Validation (issue 18): settings are chosen on the few-shot validation split, never on test
# (DESIGN.md §10). With an ablation configured, every run a choice compares (the ablated
# protocols' runs: base-to-new's base-class runs, the transfer source's all-class run) is also
# evaluated, baseline and in each setting the ablation table lists, on its own draw's validation
# images (CoOp: min(K, 4) per class of the run's classes, the draw's `val` list), reusing its
# prompt and DiT: only evaluate_val_* jobs are added. `ablation.choose_seeds` names the seeds
# whose validation numbers choose (default []: every seed); the ablation's test means then leave
# them out. Self-contained on purpose: these functions read the names above, nothing above reads
# them except the report rule (validation_inputs, validation_params).
# ---------------------------------------------------------------------------------------------

CHOOSE_SEEDS = config.get("ablation", {}).get("choose_seeds", [])
VAL_SEEDS = CHOOSE_SEEDS or SEEDS  # validation is evaluated only where it chooses


def check_choose_seeds():
    odd = sorted(set(CHOOSE_SEEDS) - set(SEEDS))
    if odd or (CHOOSE_SEEDS and set(SEEDS) <= set(CHOOSE_SEEDS)):
        raise WorkflowError(
            f"config: ablation.choose_seeds {CHOOSE_SEEDS} must be some of `seeds` {SEEDS}, "
            "leaving at least one seed to report on"
            + (f" ({odd} are not in `seeds`)" if odd else "")
            + "; or [] to choose on every seed's validation."
        )


check_choose_seeds()


def val_eval_path(dataset, method, classes, seed, mode, combo=(DEFAULT,) * 3):
    """eval/val/baseline.json, or eval/val/diffusion/<overfit>/<diffusion>/<sampling>.json:
    beside the run's test evaluation, in the same layout."""
    run = run_dir(dataset, method, classes, seed)
    if mode == "baseline":
        return f"{run}/eval/val/baseline.json"
    return f"{run}/eval/val/diffusion/{'/'.join(combo)}.json"


def val_sets_json(wildcards):
    """--sets of a run's validation: its own dataset's draw, in its own classes, read through
    the draw's feature cache (its `val` part)."""
    d, s = wildcards.dataset, wildcards.seed
    entry = {
        "dataset": {"name": d, **config["datasets"][d]},
        "split": "val",
        "classes": wildcards.classes,
        "fewshot": fewshot_path(d, s),
        "features": FEWSHOT_FEATURES.format(dataset=d, seed=s),
    }
    return to_json([entry])


def val_combos(method):
    """The diffusion settings the ablation table lists for `method`: the ablation's combos it is
    compared under and a preset's that changes at most one stage (the report leaves a preset
    that changes more out of the ablation)."""
    combos = [c for c in COMBOS if compares(c, method)]
    combos += [
        PRESET_COMBOS[p][method]
        for p in PRESETS
        if sum(name != DEFAULT for name in PRESET_COMBOS[p][method]) <= 1
    ]
    return list(dict.fromkeys(combos))


def validation_inputs(wildcards=None):
    """Every validation evaluation the ablation's choice reads (none without an ablation)."""
    if not COMBOS[1:]:
        return []
    runs = []
    if "base2new" in PROTOCOLS and ablated("base"):
        runs += [(d, "base") for d in PROTOCOLS["base2new"]["datasets"]]
    if transfer_targets() and ablated("all"):
        runs.append((transfer_targets()[0], "all"))
    return [
        path
        for m in TRAINED_METHODS
        for s in VAL_SEEDS
        for d, classes in runs
        for path in [val_eval_path(d, m, classes, s, "baseline")]
        + [val_eval_path(d, m, classes, s, "diffusion", c) for c in val_combos(m)]
    ]


def validation_params():
    """The report's extra params: the choosing seeds, only with an ablation (so that a config
    without one keeps its report params)."""
    return {"choose_seeds": CHOOSE_SEEDS} if COMBOS[1:] else {}
