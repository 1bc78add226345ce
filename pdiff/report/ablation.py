"""The ablation table: one row per (method, setting) of prompt diffusion.

Every setting differs from the defaults in one stage (overfit, diffusion or sampling), so each
row answers "what does this one choice do". Rows carry mean ± standard error over seeds of the
headline number of each protocol the settings ran on (base-to-new base/new/HM, the transfer
averages), the cost per image, the calibration error and, where the store was given to
evaluation, the memorisation ratio.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pdiff.plan.names import DEFAULT, TRANSFER
from pdiff.report.output import atomic_write, fmt, md_table, write_csv, write_text
from pdiff.report.protocols import (
    METHOD_NAMES,
    Lookup,
    Row,
    base2new_table,
    transfer_table,
)
from pdiff.report.records import Key, mean


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


def ablation_rows(index: dict[Key, dict], protocols: dict, methods, seeds) -> list[dict]:
    rows = []
    for method in methods:
        if method == "zeroshot":
            continue
        for mode, variants in (("baseline", [DEFAULT]), ("diffusion", variants_of(index, method))):
            for variant in variants:
                acc = Lookup(index, variant)
                row = Row(method, mode)
                score = _score(row, protocols, seeds, acc)
                acc.raise_missing()
                rows.append({"method": method, "mode": mode, "label": row.label,
                             "setting": variant if mode == "diffusion" else "–",
                             **score, **_cost(index, acc.used)})
    return rows


def write_ablation(out_dir: Path, rows: list[dict]) -> None:
    """ablation.csv (full precision), ablation.md and figures/ode_steps.png."""
    keys = [k for k in rows[0] if k not in ("method", "mode", "label", "setting")] if rows else []
    write_csv(out_dir / "ablation.csv", ["method", "mode", "setting", *keys],
               [[r["method"], r["mode"], r["setting"], *[r[k] for k in keys]] for r in rows])
    columns = [k for k in ("base", "new", *HEADLINE.values()) if k in keys]
    headline = [k for k in HEADLINE.values() if k in keys]
    header = ["Method", "Setting", *[_name(h).capitalize() if h != "hm" else "HM"
                                     for h in columns],
              "ms / image", "NFE", "ECE", "Memorisation"]
    table = [[r["label"], r["setting"], *[fmt(r[h], r.get(f"{h}_se")) for h in columns],
              f"{1e3 * r['seconds_per_image']:.2f}", fmt(r["nfe"]), fmt(r["ece"]),
              fmt(r["memorisation"])] for r in rows]
    text = [
        "# Ablations and diagnosis\n",
        "Each setting changes one stage of prompt diffusion from the defaults; the baseline row "
        "is the host method's learned prompt. Accuracy: mean ± standard error over seeds. "
        "ms / image: classification time per test image (ODE sampling included). ECE: expected "
        "calibration error (%). Memorisation: distance of generated prompts to their nearest "
        "stored training prompt over the store's own nearest-neighbour distance (0 = copies).\n",
        md_table(header, table),
    ]
    best = [b for metric in headline for b in best_settings(rows, metric)]
    if best:
        text += [
            "## Best setting per method\n",
            f"The setting with the highest {' / '.join(map(_name, headline))} per method, "
            "against the host method (one stage changed at a time; combining the best "
            "settings is a separate run).\n",
            md_table(
                ["Method", "Measure", "Best setting", "Prompt diffusion", "Host", "Δ"],
                [[b["label"], _name(b["metric"]), b["setting"], fmt(b["value"], b["se"]),
                  fmt(b["host"]), f"{b['value'] - b['host']:+.2f}"] for b in best],
            ),
        ]
    write_text(out_dir / "ablation.md", "\n".join(text))
    _ode_figure(out_dir / "figures" / "ode_steps.png", rows, headline[0])


def _name(metric: str) -> str:
    return {"hm": "HM", "mean": "mean of the protocols"}.get(metric, metric.replace("_", " "))


def best_settings(rows: list[dict], metric: str) -> list[dict]:
    """Per method, the prompt-diffusion setting with the highest `metric`, and the host's."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        host = [r for r in rows if r["method"] == method and r["mode"] == "baseline"]
        diff = [r for r in rows if r["method"] == method and r["mode"] == "diffusion"]
        if host and diff:
            top = max(diff, key=lambda r: r[metric])
            out.append({"method": method, "label": top["label"], "metric": metric,
                        "setting": top["setting"],
                        "value": top[metric], "se": top.get(f"{metric}_se"),
                        "host": host[0][metric]})
    return out


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
