"""The ablation and diagnosis part of the report.

Ablation: one row per (method, setting) of prompt diffusion.

Every setting differs from the defaults in one stage (overfit, diffusion or sampling), so each
row answers "what does this one choice do". Rows carry mean ± standard error over seeds of the
headline number of each protocol the settings ran on (base-to-new base/new/HM, the transfer
averages), the cost per image,
the calibration error and, where the store was given to evaluation, the memorisation ratio.
Diagnosis: per method, how well generated prompts follow the true per-sample deltas on images
held out of DiT training, how close they come to copying the store, and calibration.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pdiff.errors import PdiffError
from pdiff.report import (
    DEFAULT,
    METHOD_NAMES,
    TRANSFER,
    Key,
    Row,
    _atomic_write,
    _base2new,
    _fmt,
    _Lookup,
    _mean,
    _se,
    _transfer,
    _write_csv,
    _write_text,
    md_table,
)

# Seen cosine (generated vs true deltas on the DiT's own training images) under which a DiT is
# reported as not having learned its store: healthy demo DiTs range 0.28 (VPT) to 0.88 (CoOp).
UNDERFIT_COSINE = 0.1


def variants_of(index: dict[Key, dict], method: str) -> list[str]:
    """Settings evaluated for `method` in diffusion mode, the default first."""
    found = {k[-1] for k in index if k[0] == "diffusion" and k[1] == method}
    return [DEFAULT] * (DEFAULT in found) + sorted(found - {DEFAULT})


#: The headline number of each protocol, the column the best setting is chosen by.
HEADLINE = {"base2new": "hm", "cross_dataset": "cross_dataset",
            "domain_generalization": "domain_generalization", "all": "mean"}


def _score(row: Row, protocols: dict, seeds, acc: _Lookup) -> dict[str, Any]:
    """Headline numbers of one row on each of `protocols` (the ones the settings ran on):
    base/new/HM of base-to-new, the average accuracy of each transfer protocol."""
    out: dict[str, Any] = {}
    if "base2new" in protocols:
        datasets = list(protocols["base2new"]["datasets"])
        avg = _base2new([row], seeds, datasets, acc)[0]["average"]
        out |= {k: avg[k] for k in ("base", "base_se", "new", "new_se", "hm", "hm_se")}
    for protocol in TRANSFER:
        if protocol in protocols:
            spec = protocols[protocol]
            r = _transfer([row], seeds, spec["source"], list(spec["targets"]), acc)[0]
            out[protocol] = r["average"]["accuracy"]
            out[f"{protocol}_se"] = r["average"]["se"]
    if len(protocols) > 1:  # one number to choose a default by on every protocol at once
        out["mean"] = _mean([out[HEADLINE[p]] for p in protocols])
    return out


def _cost(index: dict[Key, dict], used: set[Key]) -> dict[str, Any]:
    recs = [index[k] for k in used]
    total = sum(int(r["total"]) for r in recs)
    memo = [r["memorisation"]["ratio"] for r in recs if isinstance(r.get("memorisation"), dict)]
    sampling = (recs[0].get("sampling") or {}) if recs else {}
    return {
        "seconds_per_image": math.fsum(float(r["seconds"]) for r in recs) / max(total, 1),
        "nfe": _mean([float(r["nfe"]) for r in recs]) if recs else None,
        "ece": _mean([float(r["ece"]) for r in recs]) if recs else None,
        "memorisation": _mean(memo) if memo else None,
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
                acc = _Lookup(index, variant)
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
    _write_csv(out_dir / "ablation.csv", ["method", "mode", "setting", *keys],
               [[r["method"], r["mode"], r["setting"], *[r[k] for k in keys]] for r in rows])
    columns = [k for k in ("base", "new", *HEADLINE.values()) if k in keys]
    headline = [k for k in HEADLINE.values() if k in keys]
    header = ["Method", "Setting", *[_name(h).capitalize() if h != "hm" else "HM"
                                     for h in columns],
              "ms / image", "NFE", "ECE", "Memorisation"]
    table = [[r["label"], r["setting"], *[_fmt(r[h], r.get(f"{h}_se")) for h in columns],
              f"{1e3 * r['seconds_per_image']:.2f}", _fmt(r["nfe"]), _fmt(r["ece"]),
              _fmt(r["memorisation"])] for r in rows]
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
                [[b["label"], _name(b["metric"]), b["setting"], _fmt(b["value"], b["se"]),
                  _fmt(b["host"]), f"{b['value'] - b['host']:+.2f}"] for b in best],
            ),
        ]
    _write_text(out_dir / "ablation.md", "\n".join(text))
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
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def load_diagnostics(paths: list[Path]) -> list[dict]:
    """The DiT diagnostics files (`pdiff fit-diffusion --diagnostics`), naming a bad one."""
    out = []
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise PdiffError(f"diagnostics file {path} is not readable JSON ({exc}); rerun "
                             "`pdiff fit-diffusion --diagnostics`") from None
        if not isinstance(record, dict) or "method" not in record:
            raise PdiffError(f"diagnostics file {path} holds no DiT diagnostics")
        out.append({**record, "path": str(path)})
    return out


def underfit_dits(diagnostics: list[dict]) -> list[dict]:
    """The DiTs that do not reproduce the prompts they were trained on.

    A seen cosine under UNDERFIT_COSINE means the DiT has not learned its store: its prompts are
    noise around the learned one and can pull accuracy down to zero-shot level (seen at DiT lr
    0.001 on the demo's largest store: seen cosine -0.27, CoOp 41.7% where its host had 84.5%).
    """
    return [{"dit": d["path"], "method": d["method"], "seed": d.get("seed"),
             "train_cosine": d["train"]["cosine_mean"],
             "held_out_cosine": d.get("held_out", {}).get("cosine_mean")}
            for d in diagnostics
            if "train" in d and d["train"]["cosine_mean"] < UNDERFIT_COSINE]


def _stat(values: list[float]) -> tuple[float | None, float | None]:
    return (_mean(values), _se(values)) if values else (None, None)


def diagnosis_rows(index: dict[Key, dict], diagnostics: list[dict], methods) -> list[dict]:
    """Per host method: generated-vs-true deltas (held out and seen), memorisation, ECE."""
    rows = []
    for method in methods:
        if method == "zeroshot":
            continue
        diags = [d for d in diagnostics if d["method"] == method]
        records = {mode: [r for k, r in index.items() if k[0] == mode and k[1] == method
                          and k[-1] == DEFAULT] for mode in ("baseline", "diffusion")}
        row: dict[str, Any] = {"method": method, "label": METHOD_NAMES.get(method, method),
                               "runs": len(diags)}
        for part, key in (("held_out", "cosine_mean"), ("held_out", "correlation_mean"),
                          ("held_out", "norm_ratio"), ("train", "cosine_mean")):
            name = f"{part}_{key.removesuffix('_mean')}"
            row[name], row[f"{name}_se"] = _stat([d[part][key] for d in diags if part in d])
        memo = [r["memorisation"]["ratio"] for r in records["diffusion"]
                if isinstance(r.get("memorisation"), dict)]
        row["memorisation"], row["memorisation_se"] = _stat(memo)
        for mode in ("baseline", "diffusion"):
            row[f"ece_{mode}"], row[f"ece_{mode}_se"] = _stat(
                [float(r["ece"]) for r in records[mode]])
        rows.append(row)
    return rows


def write_diagnosis(out_dir: Path, rows: list[dict], underfit: list[dict]) -> None:
    keys = [k for k in rows[0] if k not in ("method", "label")] if rows else []
    _write_csv(out_dir / "diagnosis.csv", ["method", *keys],
               [[r["method"], *[r[k] for k in keys]] for r in rows])
    header = ["Method", "Held-out cosine", "Held-out correlation", "Norm ratio",
              "Seen cosine", "Memorisation", "ECE baseline", "ECE + PD", "Runs"]
    table = [[r["label"], *[_fmt(r[k], r[f"{k}_se"]) for k in (
        "held_out_cosine", "held_out_correlation", "held_out_norm_ratio", "train_cosine",
        "memorisation", "ece_baseline", "ece_diffusion")], str(r["runs"])] for r in rows]
    text = [
        "# Diagnosis of prompt diffusion\n",
        "Generated vs true overfitted deltas (prompt − learned prompt), per sample: cosine, "
        "correlation and the ratio of norms, on training images held out of DiT training and, "
        "for contrast, on images it trained on (Euler, 5 steps from zero). A held-out cosine "
        "near 0 means the DiT does not predict each image's own change. Memorisation: distance "
        "of generated test prompts to the nearest stored prompt over the store's own spread "
        "(0 = copies). ECE: expected calibration error (%) over all evaluated sets. Mean ± "
        "standard error over runs (datasets × seeds).\n",
        md_table(header, table),
        "\n## DiTs that did not learn their store\n",
    ]
    if underfit:
        text += [
            f"Seen cosine under {UNDERFIT_COSINE}: these DiTs do not reproduce even the prompts "
            "they trained on, and their runs' prompt-diffusion numbers are not a verdict on the "
            "method. Raise `diffusion.lr` or `diffusion.steps` (the step budget does not grow "
            "with the store) and rerun.\n",
            md_table(["DiT", "Method", "Seen cosine", "Held-out cosine"],
                     [[f"`{u['dit']}`", METHOD_NAMES.get(u["method"], u["method"]),
                       _fmt(u["train_cosine"]), _fmt(u["held_out_cosine"])] for u in underfit]),
        ]
    else:
        text.append(f"None: every DiT reproduces its training prompts (seen cosine ≥ "
                    f"{UNDERFIT_COSINE}).")
    _write_text(out_dir / "diagnosis.md", "\n".join(text))
