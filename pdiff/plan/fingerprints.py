"""Code fingerprints: editing a stage's module reruns that stage (and, through its updated
output, everything downstream), like a params change. Each rule that runs pdiff code passes
`code=<fingerprint>` among its params, naming the modules that decide its *result*
(RULE_MODULES):

  prepare            data/synthetic.py                 the demo world's rendering, or for
                     the rehearsal world (world.kind rehearsal) data/rehearsal.py,
                     data/rehearsal_names.py and the layouts it writes (data/catalogue.py,
                     data/readers.py): WORLD_MODULES
  pretrain           pretrain.py, data/synthetic.py    the recipe and its caption/image draws
  check_data         check_data.py, data/catalogue.py, data/readers.py
  fewshot            data/fewshot.py, data/catalogue.py, data/readers.py (readers decide
                     the draw)
  features           features.py
  train              host_prompt.py, the method's modules  its model and loss (method_modules)
  overfit            overfit.py, store.py
  fit_diffusion      fit_dit.py, sampled_softmax.py, diffusion/ except sampler.py (DiT,
                     objective, normaliser, trainer, DiffusionConfig's defaults; the sampler
                     is used only by evaluation)
  evaluate_baseline  evaluate.py                       (evaluate_val_baseline too)
  evaluate_diffusion evaluate.py, diffusion/sampler.py (evaluate_val_diffusion too)
  evaluate_zeroshot  evaluate.py, zeroshot's modules   (method_modules("zeroshot"))
  report             report/, provenance.py             (summary.json records the commit
                     and machine the report ran at)

Each section's defaults live in its stage's modules (OverfitConfig in overfit.py, SamplingConfig
in diffusion/sampler.py, TrainConfig and the methods' in methods/), so they are fingerprinted
with it; config.py, which only reads and checks sections, is plumbing.
Deliberately left out: the plumbing every stage shares (cli.py, stages/ (argument parsing),
utils.py, errors.py, config.py, resume.py, inputs.py, checkpoint.py, backbone.py,
prefix_sharing.py, budget.py, data/images.py, data/templates.py, the method registry
methods/__init__.py, and this plan). A change there would rerun the whole study (days on a
cluster) for what is almost always a refactor, and their behaviour is pinned by unit tests (e.g.
prefix sharing and the truncated text encoder are exact); after a change there that does alter
results, force the affected rules with `snakemake -R <rule>`.
A method counts as its module pdiff/methods/<name>.py plus the pdiff/methods modules it imports
(base.py, text.py, ...), so editing maple.py retrains MaPLe runs only, and editing text.py every
textual method and zero-shot CLIP. fetch_weights has no fingerprint: it only downloads weights.
Only `*.py` files count; paths are relative to the repository root (the Snakefile's folder);
folders are hashed recursively in sorted order.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

from pdiff.plan.config import ConfigError
from pdiff.plan.names import ZEROSHOT

#: The modules each kind of world is written by (a demo config has no world.kind).
WORLD_MODULES = {
    "synthetic": ("pdiff/data/synthetic.py",),
    "rehearsal": (
        "pdiff/data/rehearsal.py",
        "pdiff/data/rehearsal_names.py",
        "pdiff/data/catalogue.py",
        "pdiff/data/readers.py",
    ),
}

#: The modules that decide each rule's result (without prepare's world and the methods', which
#: depend on the config and the run).
RULE_MODULES = {
    "pretrain": ("pdiff/pretrain.py", "pdiff/data/synthetic.py"),
    "check_data": ("pdiff/check_data.py", "pdiff/data/catalogue.py", "pdiff/data/readers.py"),
    "fewshot": ("pdiff/data/fewshot.py", "pdiff/data/catalogue.py", "pdiff/data/readers.py"),
    "features": ("pdiff/features.py",),
    "train": ("pdiff/host_prompt.py",),
    "overfit": ("pdiff/overfit.py", "pdiff/store.py"),
    "fit_diffusion": (
        "pdiff/fit_dit.py",
        "pdiff/sampled_softmax.py",
        "pdiff/diffusion/__init__.py",
        "pdiff/diffusion/config.py",
        "pdiff/diffusion/dit.py",
        "pdiff/diffusion/normalise.py",
        "pdiff/diffusion/objective.py",
        "pdiff/diffusion/trainer.py",
    ),
    "evaluate_baseline": ("pdiff/evaluate.py",),
    "evaluate_diffusion": ("pdiff/evaluate.py", "pdiff/diffusion/sampler.py"),
    "evaluate_zeroshot": ("pdiff/evaluate.py",),
    "report": ("pdiff/report", "pdiff/provenance.py"),
}


class Fingerprints:
    """Fingerprints of the sources under `root` (the repository the workflow runs from)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def of(self, *paths: str) -> str:
        """sha256 over the given source files and folders (their *.py files, recursively)."""
        files: list[Path] = []
        for rel in paths:
            path = self.root / rel
            if path.is_dir():
                files += sorted(path.rglob("*.py"))
            elif path.is_file():
                files.append(path)
            else:
                raise ConfigError(f"code_fingerprint: {path} does not exist")
        digest = hashlib.sha256()
        for path in files:
            digest.update(path.relative_to(self.root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
        return digest.hexdigest()[:16]

    @functools.cache  # noqa: B019 (one plan per workflow: the cache lives as long)
    def method_modules(self, method: str) -> tuple[str, ...]:
        """pdiff/methods/<method>.py and, transitively, the pdiff/methods modules it imports. A
        method registered under another module name falls back to the whole folder (still
        correct, coarser)."""
        folder = self.root / "pdiff" / "methods"
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
        return tuple(sorted(p.relative_to(self.root).as_posix() for p in seen))

    def rule(self, rule: str, method: str | None = None) -> str:
        """The fingerprint of `rule`'s modules (train: with `method`'s; evaluate_zeroshot: with
        zero-shot CLIP's)."""
        extra = {"train": method, "evaluate_zeroshot": ZEROSHOT}.get(rule)
        return self.of(*RULE_MODULES[rule], *(self.method_modules(extra) if extra else ()))

    def world(self, kind: str) -> str:
        """The fingerprint of the modules writing a world of this kind."""
        return self.of(*WORLD_MODULES[kind])
