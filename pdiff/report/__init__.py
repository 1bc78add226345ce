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
    tables = _protocol_tables(protocols, rows, seeds, acc)
    acc.raise_missing()
    if any(m != "zeroshot" for m in methods):
        summary.update(_diagnosis(out_dir, index, diagnostics or [], methods))
    ablation, used_settings = _ablation(
        out_dir, index=index, val_index=val_index, ablated=ablated, methods=methods,
        seeds=seeds, presets=presets, choose=params.get("choose_seeds") or [],
    )
    summary.update(ablation)
    used = set(acc.used) | used_settings
    unused = len(index) + len(val_index) - len(used)
    if unused:
        log.warning("report: %d input evaluation(s) are not used by any protocol table", unused)

    for protocol, table in tables.items():
        summary[protocol] = _write_protocol(out_dir, protocol, table, protocols[protocol], seeds,
                                            reference)
    _figures(out_dir, tables, protocols)
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


def _protocol_tables(protocols: dict, rows: list, seeds: list[int],
                     acc: Lookup) -> dict[str, list[dict]]:
    """Each configured protocol's table rows (base-to-new first, then the transfer ones)."""
    tables: dict[str, list[dict]] = {}
    if "base2new" in protocols:
        datasets = list(protocols["base2new"]["datasets"])
        tables["base2new"] = base2new_table(rows, seeds, datasets, acc)
    for protocol in TRANSFER:
        if protocol in protocols:
            spec = protocols[protocol]
            tables[protocol] = transfer_table(rows, seeds, spec["source"], list(spec["targets"]),
                                              acc)
    return tables


def _diagnosis(out_dir: Path, index: dict, diagnostics: list[Path],
               methods: list[str]) -> dict[str, Any]:
    """Write the diagnosis table (and warn of DiTs that do not fit their prompts)."""
    dits = load_diagnostics(diagnostics)
    diag = diagnosis_rows(index, dits, methods)
    underfit = underfit_dits(dits)
    for u in underfit:
        log.warning("report: the DiT %s does not reproduce its training prompts (seen "
                    "cosine %.2f); raise diffusion.lr or diffusion.steps", u["dit"],
                    u["train_cosine"])
    write_diagnosis(out_dir, diag, underfit)
    return {"diagnosis": diag, "underfit_dits": underfit}


def _ablation(out_dir: Path, *, index: dict, val_index: dict, ablated: dict,
              methods: list[str], seeds: list[int], presets: dict,
              choose: list[int]) -> tuple[dict[str, Any], set]:
    """Write the ablation of prompt diffusion's settings, if any ran: its part of the summary
    and the records (test and validation) it used."""
    # The ablation compares settings that change one stage; a preset that changes more is a
    # protocol row of its own, not an ablation setting.
    whole = {variant_label(combo) for p in presets.values() for combo in p.values()
             if sum(name != DEFAULT for name in combo.values()) > 1}
    settings_index = {k: r for k, r in index.items() if k[-1] not in whole}
    if not any(k[-1] != DEFAULT for k in settings_index):
        return {}, set()
    val_settings = {k: r for k, r in val_index.items() if k[-1] not in whole}
    settings = ablation_rows(settings_index, ablated, methods, seeds, val_settings, choose)
    write_ablation(out_dir, settings, seeds, choose)
    part = {"ablation": settings,
            "ablation_choice": ablation_choice(settings, ablated, seeds, choose)}
    return part, {k for k in settings_index if k[-1] != DEFAULT} | set(val_settings)


def _write_protocol(out_dir: Path, protocol: str, table: list[dict], spec: dict,
                    seeds: list[int], reference: bool) -> dict[str, Any]:
    """Write one protocol's CSV and Markdown table; its part of the summary."""
    if protocol == "base2new":
        datasets = list(spec["datasets"])
        write_base2new(out_dir, table, datasets, seeds, reference)
        return {"datasets": datasets, "rows": table, "diffusion_gain": diffusion_gains(table),
                "hm_target": HM_TARGET}
    targets = list(spec["targets"])
    write_transfer(out_dir, protocol, table, spec["source"], targets, seeds, reference)
    return {"source": spec["source"], "targets": targets, "rows": table}


TRANSFER_FIGURE_NAMES = {
    "cross_dataset": "Cross-dataset (avg. over targets)",
    "domain_generalization": "Domain generalisation (avg. over variants)",
}


def _figures(out_dir: Path, tables: dict[str, list[dict]], protocols: dict) -> None:
    """figures/base2new.png (base, new, HM) and figures/transfer.png (each transfer protocol)."""
    if "base2new" in tables:
        table = tables["base2new"]
        series = {
            name: ([r["average"][key] for r in table], [r["average"][f"{key}_se"] for r in table])
            for name, key in (("Base", "base"), ("New", "new"), ("HM", "hm"))
        }
        n = len(protocols["base2new"]["datasets"])
        bars(out_dir / "figures" / "base2new.png", [r["label"] for r in table], series,
             f"Base-to-new, average over {n} dataset(s)")
    transfer = [p for p in TRANSFER if p in tables]
    if transfer:
        series = {
            TRANSFER_FIGURE_NAMES[p]: ([r["average"]["accuracy"] for r in tables[p]],
                                       [r["average"]["se"] for r in tables[p]])
            for p in transfer
        }
        labels = [r["label"] for r in tables[transfer[0]]]
        bars(out_dir / "figures" / "transfer.png", labels, series, "Transfer")
