"""The ablation table: one row per (method, setting) of prompt diffusion.

Every setting differs from the defaults in one stage (overfit, diffusion or sampling), so each
row answers "what does this one choice do". Rows carry mean ± standard error over seeds of the
headline number of each protocol the settings ran on (base-to-new base/new/HM, the transfer
averages), the cost per image, the calibration error and, where the store was given to
evaluation, the memorisation ratio.

Settings are *chosen* on validation, never on test (DESIGN.md §10): each row also carries the
few-shot validation accuracy of its runs (base-to-new: the base classes' validation images;
transfer: the all-class source run's), over the choosing seeds only, and `best_settings` ranks by
that alone. With `choose_seeds` the test columns are means over the other seeds, so no number
shown as a result was seen by the choice.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pdiff.plan.names import DEFAULT, TRANSFER, VAL
from pdiff.report.output import atomic_write, fmt, md_table, write_csv, write_text
from pdiff.report.protocols import (
    METHOD_NAMES,
    Lookup,
    Row,
    base2new_table,
    transfer_table,
)
from pdiff.report.records import Key, mean, se


def variants_of(index: dict[Key, dict], method: str) -> list[str]:
    """Settings evaluated for `method` in diffusion mode, the default first."""
    found = {k[-1] for k in index if k[0] == "diffusion" and k[1] == method}
    return [DEFAULT] * (DEFAULT in found) + sorted(found - {DEFAULT})


#: The headline number of each protocol, the column the best setting is chosen by.
HEADLINE = {"base2new": "hm", "cross_dataset": "cross_dataset",
            "domain_generalization": "domain_generalization", "all": "mean"}


def _score(row: Row, protocols: dict, seeds, acc: Lookup) -> dict[str, Any]:
    """Headline numbers of one row on each of `protocols` (the ones the settings ran on):
    base/new/HM of base-to-new, the average accuracy of each transfer protocol."""
    out: dict[str, Any] = {}
    if "base2new" in protocols:
        datasets = list(protocols["base2new"]["datasets"])
        avg = base2new_table([row], seeds, datasets, acc)[0]["average"]
        out |= {k: avg[k] for k in ("base", "base_se", "new", "new_se", "hm", "hm_se")}
    for protocol in TRANSFER:
        if protocol in protocols:
            spec = protocols[protocol]
            r = transfer_table([row], seeds, spec["source"], list(spec["targets"]), acc)[0]
            out[protocol] = r["average"]["accuracy"]
            out[f"{protocol}_se"] = r["average"]["se"]
    if len(protocols) > 1:  # one number to choose a default by on every protocol at once
        out["mean"] = mean([out[HEADLINE[p]] for p in protocols])
    return out


#: Per protocol the settings ran on ("all": their mean): the validation number a setting is
#: chosen by, and the test number shown beside it. Base-to-new has validation images of its base
#: classes only (the new ones are unseen by design); the transfer protocols share the all-class
#: source run, so both are chosen on its validation accuracy.
CHOICE = {"base2new": ("val_base", "hm"), "cross_dataset": ("val_source", "cross_dataset"),
          "domain_generalization": ("val_source", "domain_generalization"),
          "all": ("val_mean", "mean")}
#: How the report names each validation number (in the text, and as a table column).
VAL_NAMES = {"val_base": "base-class validation", "val_source": "source validation",
             "val_mean": "mean of the protocols' validation"}
VAL_COLUMNS = {"val_base": "Val base", "val_source": "Val source", "val_mean": "Val mean"}


def _val_score(row: Row, protocols: dict, seeds, acc: Lookup) -> dict[str, Any]:
    """Validation numbers of one row over `seeds`: base-to-new's base-class validation accuracy
    (averaged over datasets), the source run's for the transfer protocols, and with several
    protocols the mean of each protocol's number (as the test side's "mean")."""
    out: dict[str, Any] = {}
    if "base2new" in protocols:
        datasets = list(protocols["base2new"]["datasets"])
        per_seed = [mean([acc(row, s, d, "base", d, VAL) for d in datasets]) for s in seeds]
        out |= {"val_base": mean(per_seed), "val_base_se": se(per_seed)}
    transfer = [p for p in TRANSFER if p in protocols]
    if transfer:
        source = protocols[transfer[0]]["source"]  # both protocols share one source run
        per_seed = [acc(row, s, source, "all", source, VAL) for s in seeds]
        out |= {"val_source": mean(per_seed), "val_source_se": se(per_seed)}
    if len(protocols) > 1:
        out["val_mean"] = mean([out[CHOICE[p][0]] for p in protocols])
    return out


def split_seeds(seeds, choose_seeds) -> tuple[list, list]:
    """(choosing seeds, reported seeds): with `choose_seeds` the choice reads only theirs and
    the test means only the others; without, both are every seed."""
    choose = [s for s in seeds if s in set(choose_seeds or ())]
    return (choose, [s for s in seeds if s not in choose]) if choose else (list(seeds),
                                                                            list(seeds))


def _cost(index: dict[Key, dict], used: set[Key]) -> dict[str, Any]:
    recs = [index[k] for k in used]
    total = sum(int(r["total"]) for r in recs)
    memo = [r["memorisation"]["ratio"] for r in recs if isinstance(r.get("memorisation"), dict)]
    sampling = (recs[0].get("sampling") or {}) if recs else {}
    return {
        "seconds_per_image": math.fsum(float(r["seconds"]) for r in recs) / max(total, 1),
        "nfe": mean([float(r["nfe"]) for r in recs]) if recs else None,
        "ece": mean([float(r["ece"]) for r in recs]) if recs else None,
        "memorisation": mean(memo) if memo else None,
        "solver": sampling.get("solver"),
        "steps": sampling.get("steps"),
        "draws": sampling.get("draws"),
    }


def ablation_rows(index: dict[Key, dict], protocols: dict, methods, seeds,
                  val_index: dict[Key, dict] | None = None, choose_seeds=()) -> list[dict]:
    """Per method and setting: test numbers over the reported seeds, cost, and the validation
    numbers (`val_index`, records of split "val") over the choosing seeds (`split_seeds`).
    Missing test or validation evaluations are named together in one error."""
    choose, report = split_seeds(seeds, choose_seeds)
    rows, missing = [], []
    for method in methods:
        if method == "zeroshot":
            continue
        for mode, variants in (("baseline", [DEFAULT]), ("diffusion", variants_of(index, method))):
            for variant in variants:
                acc, val = Lookup(index, variant), Lookup(val_index or {}, variant)
                row = Row(method, mode)
                score = _score(row, protocols, report, acc)
                chosen_on = _val_score(row, protocols, choose, val)
                missing += acc.missing + val.missing
                rows.append({"method": method, "mode": mode, "label": row.label,
                             "setting": variant if mode == "diffusion" else "–",
                             **score, **_cost(index, acc.used), **chosen_on})
    if missing:
        short = Lookup({})
        short.missing = missing
        short.raise_missing()
    return rows


def _seeds(seeds) -> str:
    return f"seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}"


def choice_note(seeds, choose_seeds) -> str:
    """The sentence that says which split and seeds chose, and which seeds the test shows."""
    choose, report = split_seeds(seeds, choose_seeds)
    if choose == report:
        return (f"Chosen on validation ({_seeds(choose)}), test shown ({_seeds(report)}, the "
                "same seeds: set `ablation.choose_seeds` to report on seeds the choice never "
                "saw).")
    return (f"Chosen on validation ({_seeds(choose)}), test shown ({_seeds(report)}, which the "
            "choice never saw).")


def write_ablation(out_dir: Path, rows: list[dict], seeds=(1,), choose_seeds=()) -> None:
    """ablation.csv (full precision), ablation.md and figures/ode_steps.png."""
    choose, report = split_seeds(seeds, choose_seeds)
    keys = [k for k in rows[0] if k not in ("method", "mode", "label", "setting")] if rows else []
    write_csv(out_dir / "ablation.csv", ["method", "mode", "setting", *keys],
               [[r["method"], r["mode"], r["setting"], *[r[k] for k in keys]] for r in rows])
    columns = [k for k in ("base", "new", *HEADLINE.values()) if k in keys]
    headline = [k for k in HEADLINE.values() if k in keys]
    choices = [p for p, (v, t) in CHOICE.items() if t in headline and v in keys]
    vals = list(dict.fromkeys(CHOICE[p][0] for p in choices))
    header = ["Method", "Setting", *[_name(h).capitalize() if h != "hm" else "HM"
                                     for h in columns],
              *[VAL_COLUMNS[v] for v in vals],
              "ms / image", "NFE", "ECE", "Memorisation"]
    table = [[r["label"], r["setting"], *[fmt(r[h], r.get(f"{h}_se")) for h in columns],
              *[fmt(r[v], r.get(f"{v}_se")) for v in vals],
              f"{1e3 * r['seconds_per_image']:.2f}", fmt(r["nfe"]), fmt(r["ece"]),
              fmt(r["memorisation"])] for r in rows]
    text = [
        "# Ablations and diagnosis\n",
        "Each setting changes one stage of prompt diffusion from the defaults; the baseline row "
        f"is the host method's learned prompt. Accuracy: mean ± standard error over seeds, test "
        f"columns over {_seeds(report)}; the Val columns are few-shot validation accuracy (CoOp: "
        f"min(K, 4) images per class; base-to-new: base classes; transfer: the source) over "
        f"{_seeds(choose)}. "
        "ms / image: classification time per test image (ODE sampling included). ECE: expected "
        "calibration error (%). Memorisation: distance of generated prompts to their nearest "
        "stored training prompt over the store's own nearest-neighbour distance (0 = copies).\n",
        md_table(header, table),
    ]
    best = [b for choice in choices for b in best_settings(rows, choice)]
    if best:
        text += [
            "## Best setting per method\n",
            f"{choice_note(seeds, choose_seeds)} Per method and measure, the setting with the "
            "highest validation accuracy (base-to-new: on its base classes; transfer: on the "
            "source) against the host method; the test number beside it never chose anything. "
            "One stage changed at a time; combining the best settings is a separate run.\n",
            md_table(
                ["Method", "Measure", "Chosen on", "Best setting", "Validation",
                 "Test", "Host (test)", "Δ test"],
                [[b["label"], _name(b["metric"]), VAL_NAMES[b["chosen_on"]], b["setting"],
                  fmt(b["val"], b["val_se"]), fmt(b["value"], b["se"]), fmt(b["host"]),
                  f"{b['value'] - b['host']:+.2f}"] for b in best],
            ),
        ]
    write_text(out_dir / "ablation.md", "\n".join(text))
    _ode_figure(out_dir / "figures" / "ode_steps.png", rows, headline[0])


def _name(metric: str) -> str:
    return {"hm": "HM", "mean": "mean of the protocols"}.get(metric, metric.replace("_", " "))


def best_settings(rows: list[dict], choice: str) -> list[dict]:
    """Per method, the prompt-diffusion setting with the highest validation number of `choice`
    (a protocol, or "all" for their mean: CHOICE), with its test number and the host's beside
    it. The ranking reads the validation number only: a test number never chooses."""
    val_key, test_key = CHOICE[choice]
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        host = [r for r in rows if r["method"] == method and r["mode"] == "baseline"]
        diff = [r for r in rows if r["method"] == method and r["mode"] == "diffusion"]
        if host and diff:
            top = max(diff, key=lambda r: r[val_key])
            out.append({"method": method, "label": top["label"], "metric": test_key,
                        "chosen_on": val_key, "setting": top["setting"],
                        "val": top[val_key], "val_se": top.get(f"{val_key}_se"),
                        "host_val": host[0][val_key],
                        "value": top[test_key], "se": top.get(f"{test_key}_se"),
                        "host": host[0][test_key]})
    return out


def ablation_choice(rows: list[dict], protocols: dict, seeds, choose_seeds=()) -> dict:
    """summary.json's record of the choice: the split and seeds that chose, the seeds the test
    numbers are over, and the best setting per method and measure."""
    choose, report = split_seeds(seeds, choose_seeds)
    choices = [p for p in (*protocols, "all") if p in CHOICE and (p != "all"
                                                                   or len(protocols) > 1)]
    return {"split": VAL, "choose_seeds": choose, "report_seeds": report,
            "note": choice_note(seeds, choose_seeds),
            "best": [b for c in choices for b in best_settings(rows, c)]}


def _ode_figure(path: Path, rows: list[dict], metric: str) -> None:
    """Accuracy vs ODE steps (default solver) and vs time per image, one line per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_steps, ax_time = fig.subplots(1, 2)
    solver = None
    for method in dict.fromkeys(r["method"] for r in rows):
        diff = [r for r in rows if r["method"] == method and r["mode"] == "diffusion"]
        default = next((r for r in diff if r["setting"] == DEFAULT), None)
        if default is None:
            continue
        solver = default["solver"]
        same = [r for r in diff if r["solver"] == solver and r["draws"] == default["draws"]
                and (r["setting"] == DEFAULT or r["setting"].startswith("sampling: steps="))]
        same.sort(key=lambda r: r["steps"])
        name = METHOD_NAMES.get(method, method)
        ax_steps.errorbar([r["steps"] for r in same], [r[metric] for r in same],
                          yerr=[r.get(f"{metric}_se") or 0 for r in same], marker="o",
                          capsize=3, label=name)
        ax_time.scatter([1e3 * r["seconds_per_image"] for r in diff], [r[metric] for r in diff],
                        label=name)
        base = next(r for r in rows if r["method"] == method and r["mode"] == "baseline")
        ax_steps.axhline(base[metric], linestyle=":", linewidth=1,
                         color=ax_steps.lines[-1].get_color())
    title = _name(metric)
    ax_steps.set(xscale="log", xlabel=f"ODE steps ({solver or 'default solver'})", ylabel=title,
                 title=f"{title} vs sampling steps (dotted: baseline)")
    ax_time.set(xlabel="ms per test image", ylabel=title, title=f"{title} vs cost, all settings")
    for ax in (ax_steps, ax_time):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
