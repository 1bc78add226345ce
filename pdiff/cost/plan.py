"""`pdiff plan-cost`: the work, time and memory of every job a config plans, per rule.

The jobs are the workflow's own: a Snakemake dry run (`snakemake -n -p --forceall`) of the
config prints every job with its shell command, and each `pdiff <stage>` command carries the
config slices the cost model needs (recipe, overfit and diffusion settings, sampling, sets).
Datasets get their real class names where they can (on disk under `data.root`, the generated
worlds, ImageNet's from open_clip; the other CoOp datasets' names in their real shape and
length from the rehearsal world, an assumption the table states), tokenized with the backbone's
own tokenizer, so every class text counts its own length.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdiff.cost.model import (
    COMPUTE_RULES,
    Arch,
    DatasetSize,
    Job,
    Throughputs,
    Work,
    template_tokens,
)
from pdiff.cost.workflow import amp, config_estimator, config_size
from pdiff.errors import PdiffError
from pdiff.plan.config import load_config, merged_config
from pdiff.plan.paths import Paths

log = logging.getLogger(__name__)

SNAKEFILE = Path(__file__).resolve().parents[2] / "Snakefile"
PLAN_CORES = 1024  # a dry run caps threads at --cores: this keeps every rule's own threads


# --------------------------------------------------------------------------------------------
# The config and the DAG, as Snakemake sees them
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """One job of a dry run: its rule, `pdiff` command line (None for rule all) and the
    resources Snakemake gives it."""

    rule: str
    argv: tuple[str, ...] | None
    resources: tuple[tuple[str, str], ...] = ()

    def options(self) -> dict[str, str]:
        """--option value pairs of the command (flags without a value are not used)."""
        argv = self.argv or ()
        return {a[2:]: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("--")}


def dry_run(configfiles: Iterable[Path], directory: Path, snakefile: Path = SNAKEFILE) -> str:
    """The output of `snakemake -n -p --forceall` for these config files, run in `directory`
    (where the workflow would run: relative paths of the config resolve there)."""
    exe = Path(sys.executable).with_name("snakemake")
    cmd = [str(exe) if exe.exists() else "snakemake", "-n", "-p", "--forceall",
           "--cores", str(PLAN_CORES), "--snakefile", str(snakefile),
           "--directory", str(directory), "--workflow-profile", "none",
           "--configfile", *(str(Path(c).resolve()) for c in configfiles)]
    log.info("planning: %s", shlex.join(cmd))
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ,
                                                                    "HF_HUB_OFFLINE": "1"})
    if res.returncode != 0:
        raise PdiffError(f"the dry run failed (snakemake exit {res.returncode}):\n"
                         f"{(res.stdout + res.stderr)[-3000:]}")
    return res.stdout + res.stderr


def parse_jobs(output: str) -> list[Planned]:
    """Every job block of a dry run's output (`rule x:` or `localrule x:`, its resources, then
    its shell command), in the printed order."""
    jobs, rule, resources = [], None, ()
    for line in output.splitlines():
        m = re.fullmatch(r"(?:local)?rule (\w+):", line)
        if m:
            rule, resources = m.group(1), ()
        elif line.startswith("    resources: ") and rule is not None:
            resources = tuple(tuple(kv.split("=", 1))
                              for kv in line[len("    resources: "):].split(", "))
        elif line.startswith("Shell command: ") and rule is not None:
            cmd = line[len("Shell command: "):]
            argv = None if cmd == "None" else tuple(shlex.split(cmd.rsplit(" > ", 1)[0]))
            jobs.append(Planned(rule, argv, resources))
            rule = None
    return jobs


# --------------------------------------------------------------------------------------------
# Planned commands -> the cost model's jobs
# --------------------------------------------------------------------------------------------


def _shots(fewshot: str) -> int:
    return int(re.search(r"shots(\d+)_seed", fewshot).group(1))


def _cap(value: str | None) -> int | None:
    return int(value) if value else None


def cost_jobs(planned: list[Planned]) -> list[Job]:
    """The cost model's view of each planned job (`Job(rule)` for the I/O-only rules)."""
    draws = {}  # fewshot output -> its --max-images (limit.train_images)
    runs = {}  # train's prompt -> the run's fields
    for p in planned:
        o = p.options()
        if p.rule == "fewshot":
            draws[o["out"]] = _cap(o.get("max-images"))
    for p in planned:
        o = p.options()
        if p.rule == "train":
            runs[o["out"]] = dict(
                dataset=json.loads(o["dataset"])["name"], method=o["method"],
                classes=o["classes"], recipe=json.loads(o["params"]),
                shots=_shots(o["fewshot"]), max_train=draws.get(o["fewshot"]))
    jobs = []
    for p in planned:
        o = p.options()
        if p.rule not in COMPUTE_RULES:
            jobs.append(Job(p.rule))
        elif p.rule in ("features_test", "features_fewshot"):
            augment = json.loads(o.get("augment", "{}"))
            fewshot = o.get("fewshot")
            jobs.append(Job(
                p.rule, dataset=json.loads(o["dataset"])["name"],
                shots=_shots(fewshot) if fewshot else 0,
                views=int(augment.get("views", 0)) if augment.get("enabled") else 0,
                max_train=draws.get(fewshot), max_test=_cap(o.get("max-images"))))
        elif p.rule == "train":
            jobs.append(Job(p.rule, augment=bool(o.get("augment")), **runs[o["out"]]))
        elif p.rule in ("overfit", "fit_diffusion"):
            jobs.append(Job(p.rule, stage=json.loads(o["params"]), **runs[o["prompt"]]))
        else:  # evaluate_*
            params = json.loads(o["params"])
            sets = tuple((s["dataset"]["name"], s["split"]) for s in json.loads(o["sets"]))
            run = runs[o["prompt"]] if "prompt" in o else {"method": "zeroshot"}
            jobs.append(Job(p.rule, sets=sets, sampling=params.get("sampling", {}),
                            eval_batch=int(params["evaluation"]["batch_size"]),
                            max_test=_cap(o.get("max-images")), **run))
    return jobs


def threads_of(p: Planned) -> int:
    return int(p.options().get("threads", 1))


# --------------------------------------------------------------------------------------------
# Dataset sizes with real class names
# --------------------------------------------------------------------------------------------


def token_counter(model: str) -> Callable[[list[str]], list[int]]:
    """Token counts of texts (without [SOT]/[EOT]) by the backbone's own tokenizer."""
    import open_clip

    from pdiff.backbone import register_model_configs

    register_model_configs()
    tokenizer = open_clip.get_tokenizer(model)

    def count(texts: list[str]) -> list[int]:
        return [int(n) - 2 for n in (tokenizer(texts) != 0).sum(-1)] if texts else []

    return count


#: ImageNet and the variants with all its classes: open_clip ships their 1,000 real names.
IMAGENET_NAMES = ("ImageNet", "ImageNetV2", "ImageNetSketch")


def classnames(cfg: Mapping[str, Any], name: str) -> tuple[list[str], str, dict[str, int]]:
    """(class names, where they come from, val/test counts read) of dataset `name`: the
    demo world's; the dataset on disk; the rehearsal world's (the real ones for ImageNet, in the
    real ones' shape and length for the other CoOp datasets); none for others."""
    from pdiff.data import DatasetSpec, read_split
    from pdiff.data.rehearsal_names import benchmark_classnames
    from pdiff.data.synthetic import DATASETS, WorldSpec

    world = cfg.get("world", {})
    generated = cfg["data"]["source"] == "synthetic"
    if generated and world.get("kind") != "rehearsal":
        if name not in DATASETS:
            return [], "", {}
        spec = WorldSpec(world["colours"], world["objects"], world["image_size"])
        return spec.classnames(DATASETS[name][0]), "the demo world's", {}
    root = Path(cfg["data"]["root"])
    spec = DatasetSpec.from_dict({"name": name, **(cfg["datasets"].get(name) or {})})
    if not generated and spec.dataset_dir(root).is_dir():
        try:
            splits = read_split(root, spec, with_train=False)
            return (splits.classnames, f"read under {root}",
                    {"val": len(splits.val), "test": len(splits.test)})
        except PdiffError as e:
            log.warning("%s: cannot read it under %s (%s); assuming its names", name, root, e)
    names = benchmark_classnames().get(name)
    if names is None:
        return [], "", {}
    if generated:
        return names, "the rehearsal world's", {}
    if name in IMAGENET_NAMES:
        return names, "open_clip's ImageNet names", {}
    if name.startswith("ImageNet"):  # A and R: 200 of ImageNet's classes
        return names, "open_clip's ImageNet names, an assumed 200-class subset", {}
    return names, "assumed: the rehearsal world's, in the real ones' shape and length", {}


def sized(cfg: Mapping[str, Any], name: str, count: Callable[[list[str]], list[int]],
          check_dir: Path) -> DatasetSize:
    """`config_size` with the real names' token counts where names are known (with names
    read from disk, their number of classes and split sizes too)."""
    from pdiff.data import DatasetSpec, clean_classname

    def one(text: str) -> int:
        return count([text])[0]

    base = config_size(cfg, name, check_dir, one)
    entry = {"name": name, **(cfg["datasets"].get(name) or {})}
    base = dataclasses.replace(
        base, template_tokens=template_tokens(DatasetSpec.from_dict(entry).template, one))
    names, source, counts = classnames(cfg, name)
    if not names or (not counts and len(names) != base.classes):
        return base
    tokens = tuple(count([clean_classname(n) for n in names]))
    return dataclasses.replace(base, name_tokens=tokens, names_source=source, **counts)


# --------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------


@dataclass
class RulePlan:
    rule: str
    work: Work
    seconds: float
    longest: float  # seconds of its longest job
    peak: float  # bytes: the largest job's peak device memory


@dataclass
class Plan:
    configfiles: list[str]
    model: str
    throughputs: Throughputs
    rules: list[RulePlan]
    sizes: dict[str, DatasetSize]
    max_pairs: int | None
    max_images: int | None = None

    @property
    def total(self) -> RulePlan:
        work = functools.reduce(lambda a, b: a + b, (r.work for r in self.rules), Work(jobs=0))
        return RulePlan("total", work, sum(r.seconds for r in self.rules),
                        max((r.longest for r in self.rules), default=0.0),
                        max((r.peak for r in self.rules), default=0.0))


def plan_cost(configfiles: list[Path], throughputs: Throughputs, directory: Path | None = None,
              snakefile: Path = SNAKEFILE) -> Plan:
    """Every job of the configs' DAG, counted and timed with `throughputs`."""
    directory = Path(directory or Path.cwd())
    cfg = load_config(configfiles, snakefile.parent)
    planned = parse_jobs(dry_run(configfiles, directory, snakefile))
    jobs = cost_jobs(planned)
    model = cfg["backbone"]["model"]
    count = token_counter(model)
    data_root = Path(cfg["data"]["root"])
    cfg = {**cfg, "data": {**cfg["data"], "root": str(directory / data_root)}}
    check_dir = directory / Paths(cfg).check_dir
    sizes: dict[str, DatasetSize] = {}

    def size(name: str) -> DatasetSize:
        if name not in sizes:
            sizes[name] = sized(cfg, name, count, check_dir)
        return sizes[name]

    estimator = config_estimator(cfg, check_dir, size, lambda t: count([t])[0], throughputs)
    rules: dict[str, RulePlan] = {}
    for p, job in zip(planned, jobs, strict=True):
        w = estimator.work(job)
        s = estimator.seconds(w, max(threads_of(p) - 1, 0))
        peak = estimator.peak_bytes(w)
        r = rules.setdefault(p.rule, RulePlan(p.rule, Work(jobs=0), 0.0, 0.0, 0.0))
        r.work, r.seconds = r.work + w, r.seconds + s
        r.longest, r.peak = max(r.longest, s), max(r.peak, peak)
    return Plan([str(c) for c in configfiles], model, throughputs, list(rules.values()), sizes,
                estimator.max_pairs, estimator.max_images)


# --------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------


def si(x: float) -> str:
    """3 significant digits with a k/M/G/T/P suffix."""
    if not x:
        return "0"
    for div, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def hours(seconds: float) -> str:
    h = seconds / 3600
    return f"{h:,.0f}" if h >= 100 else f"{h:.3g}"


COLUMNS = ("rule", "jobs", "img fwd", "img f+b", "text tok fwd", "text tok f+b", "DiT steps",
           "hours", "longest h", "peak GB")


def format_throughputs(t: Throughputs) -> str:
    return (f"{t.source} on {t.device} ({t.model}"
            + (f", DiT width {t.dit['width']} depth {t.dit['depth']}" if t.dit else "") + "):\n"
            f"  image forward {t.image_fwd:.3g}/s, image fwd+bwd {t.image_train:.3g}/s, "
            f"text forward {si(t.text_fwd)} token-positions/s, text fwd+bwd "
            f"{si(t.text_train)}/s,\n  DiT training {si(t.dit_train)} token-rows/s, DiT "
            f"forward {si(t.dit_fwd)}/s, decode {t.decode:.3g} images/s per loader worker, "
            f"job start {t.startup:.3g} s;\n  memory: weights {t.weights_bytes / 1e9:.2f} GB, "
            f"per image fwd+bwd {si(t.image_bytes)}B, per text token-position "
            f"{si(t.text_bytes)}B, per DiT token-row {si(t.dit_bytes)}B")


def format_plan(plan: Plan) -> str:
    rows = [COLUMNS]
    for r in [*plan.rules, plan.total]:
        w = r.work
        rows.append((r.rule, str(w.jobs), si(w.image_fwd), si(w.image_train), si(w.text_fwd),
                     si(w.text_train), si(w.dit_steps), hours(r.seconds), hours(r.longest),
                     f"{r.peak / 1e9:.3g}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    table = [line(rows[0]), "  ".join("-" * w for w in widths),
             *(line(r) for r in rows[1:-1]), "  ".join("-" * w for w in widths), line(rows[-1])]
    sizes = [f"  {s.name}: {s.classes} classes, {s.test} test images, "
             f"{sum(s.name_tokens) / max(s.classes, 1):.1f} tokens per class name (sizes: "
             f"{s.source}; names: {s.names_source})"
             for s in sorted(plan.sizes.values(), key=lambda s: s.name)]
    pairs = (f"at most {plan.max_pairs} (image, class) text pairs at once (compute.max_pairs)"
             if plan.max_pairs else "every (image, class) text pair of a step at once "
             "(no compute.max_pairs)")
    if plan.max_images:
        pairs += (f", at most {plan.max_images} images under autograd at once "
                  "(compute.max_images)")
    total = plan.total
    return "\n".join([
        f"pdiff plan-cost: {' + '.join(plan.configfiles)}: {total.work.jobs} jobs "
        f"(snakemake dry run), backbone {plan.model}",
        "throughputs: " + format_throughputs(plan.throughputs),
        "datasets:", *sizes,
        "",
        *table,
        "",
        f"total: {hours(total.seconds)} hours ({total.seconds / 86400:,.1f} days) on one such "
        f"device, the longest job {hours(total.longest)} h, peak memory {total.peak / 1e9:.3g} "
        f"GB; {pairs}.",
        "Units: images through the image tower (forward; forward+backward to prompts), text "
        "token-positions (a prompt's shared prefix once, then each class's own tokens), DiT "
        "training steps; hours = the sum over "
        "jobs of start-up, device compute and image decoding (threads - 1 loader workers). "
        "Not counted: the local I/O rules and `pretrain` (the demo backbone).",
    ])



def plan_cost_command(*, configfiles: list[Path], throughputs: Path | None = None,
                      assume: str | None = None, measure_only: bool = False,
                      out: Path | None = None, seconds: float = 2.0, device: str | None = None,
                      directory: Path | None = None, snakefile: Path = SNAKEFILE) -> str:
    """`pdiff plan-cost`: the table for the configs (throughputs read from a file, assumed,
    or measured here), or with `measure_only` just the measurement, written to `out`."""
    # measuring reads only the backbone and the DiT's sizes, so it skips Snakemake's schema
    # validation: a GPU node needs torch and open_clip for it, not Snakemake
    cfg = (merged_config if measure_only else load_config)(configfiles, snakefile.parent)
    model = cfg["backbone"]["model"]
    if throughputs is not None:
        thr = Throughputs.load(throughputs)
        if thr.model != model:
            log.warning("throughputs %s were measured on %s, the config's backbone is %s",
                        throughputs, thr.model, model)
    elif assume is not None:
        thr = Throughputs.assumed(Arch.of(model), cfg["diffusion"], assume, amp(cfg))
    else:
        from pdiff.cost.measure import measure

        thr = measure(model, cfg["diffusion"], seconds, device, amp(cfg))
    if out is not None:
        thr.save(out)
    if measure_only:
        return f"throughputs: {format_throughputs(thr)}" + (f"\nwritten to {out}" if out else "")
    return format_plan(plan_cost(configfiles, thr, directory, snakefile))
