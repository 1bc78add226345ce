"""What the workflow evaluates and reports: the trained runs, the (target, split) sets each
evaluation covers, the validation evaluations the ablation's choice reads, the report's inputs,
params and output files.

Validation (issue 18): settings are chosen on the few-shot validation split, never on test
(DESIGN.md §10). With an ablation configured, every run a choice compares (the ablated
protocols' runs: base-to-new's base-class runs, the transfer source's all-class run) is also
evaluated, baseline and in each setting the ablation table lists (`Settings.val_combos`), on its
own draw's validation images (CoOp: min(K, 4) per class of the run's classes, the draw's `val`
list), reusing its prompt and DiT: only evaluate_val_* jobs are added. `ablation.choose_seeds`
names the seeds whose validation numbers choose (default []: every seed); the ablation's test
means then leave them out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pdiff.plan.checks import choose_seeds
from pdiff.plan.names import PROTOCOLS, STAGES, TRANSFER
from pdiff.plan.paths import Paths
from pdiff.plan.variants import Settings

#: A (target dataset, split) an evaluation covers.
EvalSet = tuple[str, str]

#: Report category of each protocol's table.
PROTOCOL_CATEGORIES = dict(
    zip(PROTOCOLS, ("Base-to-new", "Cross-dataset", "Domain generalisation"), strict=True)
)


class Targets:
    """The evaluations and report outputs of one config."""

    def __init__(self, cfg: Mapping[str, Any], trained: Sequence[str], paths: Paths,
                 settings: Settings) -> None:
        self.cfg = cfg
        self.protocols: dict[str, Any] = cfg["protocols"]
        self.trained = list(trained)
        self.paths = paths
        self.settings = settings
        self.choose_seeds: list[int] = choose_seeds(cfg)
        #: the seeds evaluated on validation: only where it chooses
        self.val_seeds: list[int] = self.choose_seeds or list(cfg["seeds"])

    def transfer_targets(self) -> list[str]:
        """Targets of the all-class source run: the source itself, then the cross-dataset and
        domain-generalisation targets (both protocols share one source, checked)."""
        targets: list[str] = []
        for protocol in TRANSFER:
            if protocol in self.protocols:
                p = self.protocols[protocol]
                targets += [p["source"], *p["targets"]]
        return list(dict.fromkeys(targets))

    def runs(self) -> list[tuple[str, str]]:
        """(dataset, classes) of every trained run, per method and seed: each base-to-new
        dataset's base classes, then the transfer source's all classes."""
        runs = []
        if "base2new" in self.protocols:
            runs += [(d, "base") for d in self.protocols["base2new"]["datasets"]]
        transfer = self.transfer_targets()
        if transfer:
            runs.append((transfer[0], "all"))
        return runs

    def eval_sets(self, dataset: str, classes: str) -> list[EvalSet]:
        """The sets one trained run is evaluated on: its own base and new classes for a
        base-class run, every transfer target for the all-class source run."""
        if classes == "base":
            return [(dataset, "base"), (dataset, "new")]
        return [(target, "all") for target in self.transfer_targets()]

    def zeroshot_sets(self, dataset: str) -> list[EvalSet]:
        """The sets zero-shot CLIP is evaluated on for one dataset."""
        sets = []
        if "base2new" in self.protocols and dataset in self.protocols["base2new"]["datasets"]:
            sets += [(dataset, "base"), (dataset, "new")]
        if dataset in self.transfer_targets():
            sets.append((dataset, "all"))
        return sets

    def test_features(self, sets: Sequence[EvalSet]) -> dict[str, str]:
        """The test-split feature caches the evaluation of `sets` reads, by dataset name."""
        return {t: self.paths.test_features(t) for t in dict.fromkeys(t for t, _ in sets)}

    def sets_input(self, sets: Sequence[EvalSet]) -> list[str]:
        """The check_data reports of the datasets of `sets`."""
        return list(dict.fromkeys(self.paths.check(t) for t, _ in sets))

    # ---- validation (the ablation's choice) ---------------------------------------------------

    def validation_runs(self) -> list[tuple[str, str]]:
        """(dataset, classes) of the runs an ablation choice compares (none without one)."""
        if not self.settings.combos[1:]:
            return []
        return [(d, classes) for d, classes in self.runs() if self.settings.ablated(classes)]

    def validation_inputs(self) -> list[str]:
        """Every validation evaluation the ablation's choice reads (none without an ablation)."""
        paths = []
        for m in self.trained:
            for s in self.val_seeds:
                for d, classes in self.validation_runs():
                    run = (d, m, classes, s)
                    paths.append(self.paths.evaluation(*run, mode="baseline", val=True))
                    paths += [
                        self.paths.evaluation(*run, mode="diffusion", combo=c, val=True)
                        for c in self.settings.val_combos(m)
                    ]
        return paths

    # ---- the report ----------------------------------------------------------------------

    def report_inputs(self) -> list[str]:
        """Every evaluation bundle the protocols imply, in a stable order."""
        runs = self.runs()
        settings = self.settings
        datasets = [d for d, _ in runs] + self.transfer_targets()
        paths = [self.paths.zeroshot(d) for d in dict.fromkeys(datasets)]
        for m in self.trained:
            for s in self.cfg["seeds"]:
                for d, classes in runs:
                    run = (d, m, classes, s)
                    paths.append(self.paths.evaluation(*run, mode="baseline"))
                    combos = settings.combos if settings.ablated(classes) else settings.combos[:1]
                    paths += [
                        self.paths.evaluation(*run, mode="diffusion", combo=c)
                        for c in combos
                        if settings.compares(c, m)
                    ]
                    paths += [
                        self.paths.evaluation(*run, mode="diffusion",
                                              combo=settings.preset_combos[p][m])
                        for p in settings.presets
                    ]
        return list(dict.fromkeys(paths))  # a preset's evaluation may be another setting's

    def diagnostics_inputs(self) -> list[str]:
        """The held-out diagnostics of every default DiT (one per trained run)."""
        return [
            self.paths.default_dit_diagnostics(d, m, classes, s)
            for m in self.trained
            for s in self.cfg["seeds"]
            for d, classes in self.runs()
        ]

    def report_params(self) -> dict[str, Any]:
        """What the report reads besides the evaluations: the protocols, methods and seeds, each
        preset's (overfit, diffusion, sampling) folders per method (only with presets) and the
        seeds choosing on validation (only with an ablation), so a config without them keeps
        its report params."""
        cfg = self.cfg
        params: dict[str, Any] = {
            "protocols": cfg["protocols"],
            "methods": cfg["methods"],
            "seeds": cfg["seeds"],
            "ablation_protocols": self.settings.ablation_protocols,
            "reference": cfg["report"]["reference"],
        }
        if self.settings.presets:
            params["presets"] = {
                p: {m: dict(zip(STAGES, combo, strict=True)) for m, combo in combos.items()}
                for p, combos in self.settings.preset_combos.items()
            }
        if self.settings.combos[1:]:  # the choosing seeds, only with an ablation
            params["choose_seeds"] = self.choose_seeds
        return params

    def report_files(self) -> dict[str, tuple[str, str | None, str]]:
        """name -> (path, caption or None, category): what `pdiff report` writes for these
        protocols. Captions are relative to workflow/rules/, where the report rule is."""
        out = self.paths.report_dir
        files: dict[str, tuple[str, str | None, str]] = {}
        for protocol, category in PROTOCOL_CATEGORIES.items():
            if protocol in self.protocols:
                caption = f"../report/{protocol}.rst"
                files[f"{protocol}_csv"] = (f"{out}/{protocol}.csv", caption, category)
                files[f"{protocol}_md"] = (f"{out}/{protocol}.md", None, category)
        if "base2new" in self.protocols:
            files["base2new_png"] = (
                f"{out}/figures/base2new.png",
                "../report/base2new_figure.rst",
                "Base-to-new",
            )
        if any(p in self.protocols for p in TRANSFER):
            files["transfer_png"] = (
                f"{out}/figures/transfer.png",
                "../report/transfer_figure.rst",
                "Transfer",
            )
        if self.settings.combos[1:]:
            files["ablation_csv"] = (f"{out}/ablation.csv", "../report/ablation.rst", "Ablations")
            files["ablation_md"] = (f"{out}/ablation.md", None, "Ablations")
            files["ode_steps_png"] = (
                f"{out}/figures/ode_steps.png",
                "../report/ode_steps_figure.rst",
                "Ablations",
            )
        if self.trained:
            files["diagnosis_csv"] = (
                f"{out}/diagnosis.csv",
                "../report/diagnosis.rst",
                "Diagnosis",
            )
            files["diagnosis_md"] = (f"{out}/diagnosis.md", None, "Diagnosis")
        files["summary"] = (f"{out}/summary.json", None, "Summary")
        return files

    def final_outputs(self) -> list[str]:
        return [path for path, _, _ in self.report_files().values()]


