"""The report stage: tables, figures and a summary from the evaluation JSON files only.

`make_report` reads the JSON that `pdiff evaluate` writes (never logs) and produces, under the
output folder, for each protocol present in ``params["protocols"]``:

- ``base2new.csv/.md``: per dataset base, new and HM, then the average over datasets, where base
  and new are averaged and HM = 2·B·N/(B+N) is computed from those averages (the published
  convention);
- ``cross_dataset.csv/.md``: accuracy on the source, on each target and the average over targets;
- ``domain_generalization.csv/.md``: accuracy on the source, each variant and the average over
  variants;

plus ``figures/base2new.png`` and ``figures/transfer.png`` and ``summary.json`` (every number at
full precision). Every value is the mean over seeds; the CSV files carry the standard error over
seeds in ``*_se`` columns (empty with a single seed). For an average or an HM the standard error
is that of the per-seed quantity (e.g. the per-seed HM of the per-seed averages).

The modules: `records` (reading and indexing the evaluation files), `protocols` (the protocol
tables), `ablation` and `diagnosis` (their tables and figure), `output` (atomic writers,
formatting, bar charts).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pdiff.errors import PdiffError
from pdiff.plan.names import DEFAULT, TRANSFER, VAL, default_ablation_protocols
from pdiff.provenance import provenance
from pdiff.report.ablation import ablation_choice, ablation_rows, write_ablation
from pdiff.report.diagnosis import diagnosis_rows, load_diagnostics, underfit_dits, write_diagnosis
from pdiff.report.output import bars, jsonable, write_text
from pdiff.report.protocols import (
    HM_TARGET,
    PROTOCOL_TITLES,
    Lookup,
    base2new_table,
    diffusion_gains,
    evaluation_cost,
    table_rows,
    transfer_table,
    write_base2new,
    write_transfer,
)
from pdiff.report.published import PUBLISHED_B2N, PUBLISHED_TRANSFER
from pdiff.report.records import index_evaluations, variant_label

log = logging.getLogger(__name__)


def ablation_protocols(params: dict, protocols: dict) -> list[str]:
    """The protocols the ablation settings were run on (`ablation_protocols` in the params;
    default: base-to-new, else the transfer protocols), each a configured one."""
    chosen = list(params.get("ablation_protocols") or default_ablation_protocols(protocols))
    off = [p for p in chosen if p not in protocols]
    if off:
        raise PdiffError(f"report --params: ablation_protocols {off} are not among the "
                         f"protocols {sorted(protocols)}")
    return chosen


def check_params(params: dict) -> tuple[dict, list[str], list[int], bool]:
    if not isinstance(params, dict):
        raise PdiffError("report --params must be a JSON object")
    for k in ("protocols", "methods", "seeds"):
        if k not in params:
            raise PdiffError(f"report --params lacks {k!r} (expected protocols, methods, seeds)")
    protocols = params["protocols"]
    unknown = set(protocols) - set(PROTOCOL_TITLES)
    if unknown:
        raise PdiffError(f"report --params: unknown protocol(s) {sorted(unknown)}")
    seeds = params["seeds"]
    if not seeds:
        raise PdiffError("report --params: seeds is empty")
    choose = params.get("choose_seeds") or []
    if set(choose) - set(seeds) or (choose and set(seeds) <= set(choose)):
        raise PdiffError(f"report --params: choose_seeds {choose} must be some of the seeds "
                         f"{seeds}, leaving at least one to report on")
    return protocols, list(params["methods"]), list(seeds), bool(params.get("reference", False))


def make_report(*, inputs: list[Path], params: dict, out_dir: Path,
                diagnostics: list[Path] | None = None) -> None:
    """Write the protocol tables, figures and summary.json under `out_dir`.

    `params` = {"protocols": config.protocols, "methods": config.methods, "seeds": config.seeds,
    "reference": config.report.reference, "ablation_protocols": [...] (optional), "presets":
    {preset: {method: {stage: folder}}} (optional: each preset's own prompt-diffusion row),
    "choose_seeds": [...] (optional: the seeds whose validation numbers choose the ablation's
    best settings, left out of its test means; default: every seed)}. Validation records (split
    "val") are read by the ablation's choice only, never by a protocol table. Raises
    PdiffError naming the file for a missing or malformed input, and listing every evaluation
    the protocols need that is not among `inputs`.
    """
    protocols, methods, seeds, reference = check_params(params)
    ablated = {p: protocols[p] for p in ablation_protocols(params, protocols)}
    out_dir = Path(out_dir)
    index = index_evaluations(Path(p) for p in inputs)
    # validation records choose settings and nothing else: no table, cost or diagnosis sees them
    val_index = {k: r for k, r in index.items() if k[6] == VAL}
    index = {k: r for k, r in index.items() if k[6] != VAL}
    acc = Lookup(index)
    presets = params.get("presets") or {}
    rows = table_rows(methods, presets)

    summary: dict[str, Any] = {
        "seeds": seeds,
        "methods": methods,
        "rows": [{"label": r.label, "method": r.method, "mode": r.mode, "tag": r.tag}
                 for r in rows],
        "hm_convention": "HM = 2*B*N/(B+N) from base and new averaged over datasets",
    }
    tables: dict[str, list[dict]] = {}
    if "base2new" in protocols:
        datasets = list(protocols["base2new"]["datasets"])
        tables["base2new"] = base2new_table(rows, seeds, datasets, acc)
    for protocol in TRANSFER:
        if protocol in protocols:
            spec = protocols[protocol]
            targets = list(spec["targets"])
            tables[protocol] = transfer_table(rows, seeds, spec["source"], targets, acc)
    acc.raise_missing()
    used = set(acc.used)
    if any(m != "zeroshot" for m in methods):
        dits = load_diagnostics(diagnostics or [])
        diag = diagnosis_rows(index, dits, methods)
        underfit = underfit_dits(dits)
        for u in underfit:
            log.warning("report: the DiT %s does not reproduce its training prompts (seen "
                        "cosine %.2f); raise diffusion.lr or diffusion.steps", u["dit"],
                        u["train_cosine"])
        write_diagnosis(out_dir, diag, underfit)
        summary["diagnosis"] = diag
        summary["underfit_dits"] = underfit
    # The ablation compares settings that change one stage; a preset that changes more is a
    # protocol row of its own, not an ablation setting.
    whole = {variant_label(combo) for p in presets.values() for combo in p.values()
             if sum(name != DEFAULT for name in combo.values()) > 1}
    settings_index = {k: r for k, r in index.items() if k[-1] not in whole}
    used_val: set = set()
    if any(k[-1] != DEFAULT for k in settings_index):  # prompt diffusion in other settings
        choose = params.get("choose_seeds") or []
        val_settings = {k: r for k, r in val_index.items() if k[-1] not in whole}
        settings = ablation_rows(settings_index, ablated, methods, seeds, val_settings, choose)
        write_ablation(out_dir, settings, seeds, choose)
        summary["ablation"] = settings
        summary["ablation_choice"] = ablation_choice(settings, ablated, seeds, choose)
        used |= {k for k in settings_index if k[-1] != DEFAULT}
        used_val = set(val_settings)
    unused = len(index) - len(used) + len(val_index) - len(used_val)
    if unused:
        log.warning("report: %d input evaluation(s) are not used by any protocol table", unused)

    if "base2new" in tables:
        datasets = list(protocols["base2new"]["datasets"])
        write_base2new(out_dir, tables["base2new"], datasets, seeds, reference)
        summary["base2new"] = {
            "datasets": datasets,
            "rows": tables["base2new"],
            "diffusion_gain": diffusion_gains(tables["base2new"]),
            "hm_target": HM_TARGET,
        }
        labels = [r["label"] for r in tables["base2new"]]
        series = {
            name: (
                [r["average"][key] for r in tables["base2new"]],
                [r["average"][f"{key}_se"] for r in tables["base2new"]],
            )
            for name, key in (("Base", "base"), ("New", "new"), ("HM", "hm"))
        }
        bars(
            out_dir / "figures" / "base2new.png",
            labels,
            series,
            f"Base-to-new, average over {len(datasets)} dataset(s)",
        )
    for protocol in TRANSFER:
        if protocol in tables:
            spec = protocols[protocol]
            write_transfer(out_dir, protocol, tables[protocol], spec["source"],
                           list(spec["targets"]), seeds, reference)
            summary[protocol] = {
                "source": spec["source"],
                "targets": list(spec["targets"]),
                "rows": tables[protocol],
            }
    transfer = [p for p in TRANSFER if p in tables]
    if transfer:
        names = {
            "cross_dataset": "Cross-dataset (avg. over targets)",
            "domain_generalization": "Domain generalisation (avg. over variants)",
        }
        labels = [r["label"] for r in tables[transfer[0]]]
        series = {
            names[p]: (
                [r["average"]["accuracy"] for r in tables[p]],
                [r["average"]["se"] for r in tables[p]],
            )
            for p in transfer
        }
        bars(out_dir / "figures" / "transfer.png", labels, series, "Transfer")

    if reference:
        summary["reference"] = {
            "base2new": {m: asdict(p) for m, p in PUBLISHED_B2N.items()},
            **{
                protocol: {m: asdict(p) for m, p in PUBLISHED_TRANSFER[protocol].items()}
                for protocol in TRANSFER
                if protocol in tables
            },
        }
    summary["cost"] = evaluation_cost(index, acc.used, rows)
    summary["inputs"] = sorted({r["_file"] for r in index.values()})
    summary["provenance"] = provenance()
    write_text(
        out_dir / "summary.json", json.dumps(jsonable(summary), indent=2, sort_keys=True) + "\n"
    )
    log.info("report written to %s", out_dir)
