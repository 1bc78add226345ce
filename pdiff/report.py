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
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdiff.errors import PdiffError

log = logging.getLogger(__name__)

#: The keys every evaluation JSON carries (the contract of `pdiff evaluate`).
REQUIRED_KEYS = (
    "mode",
    "method",
    "train_dataset",
    "train_classes",
    "seed",
    "target",
    "split",
    "accuracy",
    "correct",
    "total",
    "ece",
    "seconds",
    "images_per_second",
    "nfe",
    "sampling",
)
MODES = ("zeroshot", "baseline", "diffusion")
SPLITS = ("base", "new", "all")

#: Display names of the host methods.
METHOD_NAMES = {
    "zeroshot": "zero-shot CLIP",
    "coop": "CoOp",
    "cocoop": "CoCoOp",
    "kgcoop": "KgCoOp",
    "vpt": "VPT",
    "maple": "MaPLe",
    "promptsrc": "PromptSRC",
}

#: Published base-to-new averages over the 11 datasets (ViT-B/16, 16 shots, 3 seeds):
#: method -> (base, new, HM).
PUBLISHED = {
    "zeroshot": (69.34, 74.22, 71.70),
    "coop": (82.69, 63.22, 71.66),
    "cocoop": (80.47, 71.69, 75.83),
    "kgcoop": (80.73, 73.60, 77.00),
    "vpt": (80.24, 73.43, 76.68),
    "maple": (82.28, 75.14, 78.55),
    "promptsrc": (84.26, 76.10, 79.97),
}

#: Protocol key -> (file stem, title).
PROTOCOL_TITLES = {
    "base2new": "Base-to-new generalisation",
    "cross_dataset": "Cross-dataset transfer",
    "domain_generalization": "Domain generalisation",
}


# ---------------------------------------------------------------------------------------------
# Small numerics
# ---------------------------------------------------------------------------------------------


def harmonic_mean(base: float, new: float) -> float:
    """HM = 2·B·N/(B+N) (0 when both are 0)."""
    return 2.0 * base * new / (base + new) if base + new else 0.0


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _se(values: Sequence[float]) -> float | None:
    """Standard error of the mean (sample std / sqrt(n)); None for fewer than two values."""
    n = len(values)
    if n < 2:
        return None
    mu = _mean(values)
    var = math.fsum((v - mu) ** 2 for v in values) / (n - 1)
    return math.sqrt(var / n)


def _stat(values: Sequence[float]) -> dict[str, float | None]:
    return {"mean": _mean(values), "se": _se(values)}


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One row of every table: zero-shot CLIP, or a host method in baseline or diffusion mode."""

    method: str
    mode: str

    @property
    def label(self) -> str:
        if self.mode == "zeroshot":
            return METHOD_NAMES["zeroshot"]
        name = METHOD_NAMES.get(self.method, self.method)
        return name if self.mode == "baseline" else f"{name} + prompt diffusion"


Key = tuple[str, str, Any, Any, Any, str, str, str]
DEFAULT = "default"
TRANSFER = ("cross_dataset", "domain_generalization")  # protocols of the all-class source run
STAGES = ("overfit", "diffusion", "sampling")


def variant_label(variant: dict | None) -> str:
    """"default", or the one stage setting that differs, e.g. "sampling: steps=10"."""
    parts = [f"{k}: {v}" for k, v in (variant or {}).items() if k in STAGES and v != DEFAULT]
    return "; ".join(parts) or DEFAULT


def _key(mode, method, train_dataset, train_classes, seed, target, split, variant=DEFAULT
         ) -> Key:
    if mode == "zeroshot":  # one deterministic evaluation, whatever was trained
        method, train_dataset, train_classes, seed = "zeroshot", None, None, None
    return (mode, method, train_dataset, train_classes, seed, target, split, variant)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def load_evaluation(path: Path) -> list[dict]:
    """Read and check one evaluation bundle ({"evaluations": [record, ...]}), naming the file in
    every error."""
    path = Path(path)
    if not path.is_file():
        raise PdiffError(f"report input {path} does not exist (run its `pdiff evaluate` first)")
    try:
        bundle = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PdiffError(f"report input {path} is not readable JSON: {exc}") from None
    records = bundle.get("evaluations") if isinstance(bundle, dict) else None
    if not isinstance(records, list) or not records:
        raise PdiffError(f"report input {path} holds no evaluations (expected "
                         '{"evaluations": [...]} as written by `pdiff evaluate`)')
    return [_check_record(path, r) for r in records]


def _check_record(path: Path, record: Any) -> dict:
    if not isinstance(record, dict):
        raise PdiffError(f"report input {path} holds an evaluation that is no JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        raise PdiffError(
            f"report input {path} lacks key(s) {', '.join(missing)}; an evaluation JSON "
            f"carries {', '.join(REQUIRED_KEYS)}"
        )
    if record["mode"] not in MODES:
        raise PdiffError(f"report input {path}: mode {record['mode']!r} is not one of {MODES}")
    if record["split"] not in SPLITS:
        raise PdiffError(f"report input {path}: split {record['split']!r} is not one of {SPLITS}")
    acc = record["accuracy"]
    if not _is_number(acc) or not 0 <= acc <= 100:
        raise PdiffError(f"report input {path}: accuracy {acc!r} is not a percentage in [0, 100]")
    if record["mode"] != "zeroshot":
        for k in ("method", "train_dataset", "train_classes", "seed"):
            if record[k] is None:
                raise PdiffError(f"report input {path}: {k} is null in {record['mode']} mode")
    return record


def _index(inputs: Iterable[Path]) -> dict[Key, dict]:
    index: dict[Key, dict] = {}
    for path in inputs:
        for r in load_evaluation(path):
            key = _key(r["mode"], r["method"], r["train_dataset"], r["train_classes"],
                       r["seed"], r["target"], r["split"], variant_label(r.get("variant")))
            if key in index:
                raise PdiffError(
                    f"report inputs {index[key]['_file']} and {path} hold the same evaluation "
                    f"({r['mode']} {r['method']} on {r['target']}/{r['split']}, seed {r['seed']}"
                    f", {key[-1]})"
                )
            index[key] = {**r, "_file": str(path)}
    return index


def ablation_protocols(params: dict, protocols: dict) -> list[str]:
    """The protocols the ablation settings were run on (`ablation_protocols` in the params;
    default: base-to-new, else the transfer protocols), each a configured one."""
    default = ["base2new"] if "base2new" in protocols else [p for p in TRANSFER if p in protocols]
    chosen = list(params.get("ablation_protocols") or default)
    off = [p for p in chosen if p not in protocols]
    if off:
        raise PdiffError(f"report --params: ablation_protocols {off} are not among the "
                         f"protocols {sorted(protocols)}")
    return chosen


def _check_params(params: dict) -> tuple[dict, list[str], list[int], bool]:
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
    return protocols, list(params["methods"]), list(seeds), bool(params.get("reference", False))


class _Lookup:
    """Accuracy lookups that collect every missing evaluation for one clear error."""

    def __init__(self, index: dict[Key, dict], variant: str = DEFAULT):
        self.index, self.variant = index, variant
        self.missing: list[str] = []
        self.used: set[Key] = set()

    def __call__(self, row: Row, seed, train_dataset, train_classes, target, split) -> float:
        variant = DEFAULT if row.mode != "diffusion" else self.variant
        key = _key(row.mode, row.method, train_dataset, train_classes, seed, target, split,
                   variant)
        record = self.index.get(key)
        if record is None:
            if row.mode == "zeroshot":
                where = f"results/zeroshot/{target}.json"
            else:
                where = (
                    f"runs/{train_dataset}/{row.method}/{train_classes}/seed{seed}/eval/"
                    f"{row.mode}.json"
                )
            self.missing.append(f"{row.label} on {target}/{split} (e.g. {where})")
            return math.nan
        self.used.add(key)
        return float(record["accuracy"])

    def raise_missing(self) -> None:
        if self.missing:
            shown = "\n  ".join(self.missing[:20])
            more = f"\n  ... and {len(self.missing) - 20} more" if len(self.missing) > 20 else ""
            raise PdiffError(
                f"report: {len(self.missing)} evaluation(s) the protocols need are not among "
                f"the inputs:\n  {shown}{more}"
            )


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def _rows(methods: Sequence[str]) -> list[Row]:
    rows = [Row("zeroshot", "zeroshot")]
    for m in methods:
        if m != "zeroshot":
            rows += [Row(m, "baseline"), Row(m, "diffusion")]
    return rows


def _row_seeds(row: Row, seeds: Sequence[int]) -> list:
    return [None] if row.mode == "zeroshot" else list(seeds)


def _base2new(rows, seeds, datasets, acc) -> list[dict]:
    out = []
    for row in rows:
        row_seeds = _row_seeds(row, seeds)
        # per seed, per dataset
        b = {s: {d: acc(row, s, d, "base", d, "base") for d in datasets} for s in row_seeds}
        n = {s: {d: acc(row, s, d, "base", d, "new") for d in datasets} for s in row_seeds}
        per_dataset = {}
        for d in datasets:
            bs = [b[s][d] for s in row_seeds]
            ns = [n[s][d] for s in row_seeds]
            base, new = _mean(bs), _mean(ns)
            per_dataset[d] = {
                "base": base,
                "base_se": _se(bs),
                "new": new,
                "new_se": _se(ns),
                "hm": harmonic_mean(base, new),
                "hm_se": _se([harmonic_mean(x, y) for x, y in zip(bs, ns, strict=True)]),
            }
        avg_b = [_mean([b[s][d] for d in datasets]) for s in row_seeds]
        avg_n = [_mean([n[s][d] for d in datasets]) for s in row_seeds]
        base, new = _mean(avg_b), _mean(avg_n)
        average = {
            "base": base,
            "base_se": _se(avg_b),
            "new": new,
            "new_se": _se(avg_n),
            "hm": harmonic_mean(base, new),
            "hm_se": _se([harmonic_mean(x, y) for x, y in zip(avg_b, avg_n, strict=True)]),
        }
        per_seed = {
            str(s): {d: {"base": b[s][d], "new": n[s][d]} for d in datasets} for s in row_seeds
        }
        out.append(
            {
                **_row_header(row, row_seeds),
                "per_dataset": per_dataset,
                "average": average,
                "per_seed": per_seed,
            }
        )
    return out


#: What prompt diffusion aims to add to its host method's base-to-new HM (points).
HM_TARGET = 3.0


def _dataset_average(row: dict, seed: str) -> dict[str, float]:
    """One seed's base and new accuracy of a base-to-new row, averaged over datasets."""
    per_dataset = row["per_seed"][seed].values()
    return {k: _mean([v[k] for v in per_dataset]) for k in ("base", "new")}


def _gains(table: list[dict]) -> list[dict]:
    """Prompt diffusion minus its host, per method: base, new and HM of the dataset averages,
    with the standard error of the paired per-seed differences."""
    rows = {(r["method"], r["mode"]): r for r in table}
    out = []
    for (method, mode), host in rows.items():
        pd = rows.get((method, "diffusion"))
        if mode != "baseline" or pd is None:
            continue
        seeds = [s for s in host["per_seed"] if s in pd["per_seed"]]
        diffs: dict[str, list[float]] = {"base": [], "new": [], "hm": []}
        for s in seeds:
            h, p = _dataset_average(host, s), _dataset_average(pd, s)
            for k in ("base", "new"):
                diffs[k].append(p[k] - h[k])
            hm = harmonic_mean(p["base"], p["new"]) - harmonic_mean(h["base"], h["new"])
            diffs["hm"].append(hm)
        gain = {"method": method, "label": METHOD_NAMES.get(method, method),
                "n_seeds": len(seeds)}
        for k in ("base", "new", "hm"):
            gain[k] = pd["average"][k] - host["average"][k]
            gain[f"{k}_se"] = _se(diffs[k])
        gain["target_met"] = gain["hm"] >= HM_TARGET
        out.append(gain)
    return out


def _row_header(row, row_seeds) -> dict:
    """The identifying fields every summary row starts with."""
    return {
        "label": row.label,
        "method": row.method,
        "mode": row.mode,
        "n_seeds": len(row_seeds),
        "seeds": [s for s in row_seeds if s is not None],
    }


def _transfer(rows, seeds, source, targets, acc) -> list[dict]:
    """Source accuracy, each target and the average over targets (split all, all-class run)."""
    out = []
    for row in rows:
        row_seeds = _row_seeds(row, seeds)
        a = {
            s: {t: acc(row, s, source, "all", t, "all") for t in [source, *targets]}
            for s in row_seeds
        }
        columns = {}
        for t in [source, *targets]:
            vals = [a[s][t] for s in row_seeds]
            columns[t] = {"accuracy": _mean(vals), "se": _se(vals)}
        avg = [_mean([a[s][t] for t in targets]) for s in row_seeds]
        out.append(
            {
                **_row_header(row, row_seeds),
                "source": {"dataset": source, **columns[source]},
                "targets": {t: columns[t] for t in targets},
                "average": {"accuracy": _mean(avg), "se": _se(avg)},
                "per_seed": {str(s): a[s] for s in row_seeds},
            }
        )
    return out


def _numbers(records: Sequence[dict], key: str) -> list[float]:
    return [float(r[key]) for r in records if _is_number(r.get(key))]


def _cost(index: dict[Key, dict], used: set[Key], rows: Sequence[Row]) -> dict[str, dict]:
    """Per row: total evaluation seconds, mean images/s, NFE and ECE over the evaluations used."""
    out = {}
    for row in rows:
        recs = [
            index[k]
            for k in sorted(used, key=repr)
            if k[0] == row.mode and (row.mode == "zeroshot" or k[1] == row.method)
        ]
        if not recs:
            continue
        entry: dict[str, Any] = {"evaluations": len(recs)}
        entry["seconds"] = math.fsum(_numbers(recs, "seconds"))
        for key in ("images_per_second", "nfe", "ece"):
            values = _numbers(recs, key)
            entry[key] = _mean(values) if values else None
        out[row.label] = entry
    return out


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(text))


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for r in rows:
                w.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in r])

    _atomic_write(path, write)


def _fmt(value: float | None, se: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{value:.2f}"
    if se is not None:
        text += f" ± {se:.2f}"
    return text


def _signed(value: float) -> str:
    return f"{value:+.2f}"


def _fmt_signed(value: float, se: float | None) -> str:
    return _signed(value) + (f" ± {se:.2f}" if se is not None else "")


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A GitHub Markdown table; the first `left` columns left-aligned, the rest right-aligned."""

    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |"]
    lines.append("|" + "|".join(":---" if i < left else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _seed_note(seeds: Sequence[int]) -> str:
    return (
        f"Mean over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); ± is the standard error "
        "over seeds where there are at least two. Accuracy in %."
    )


def _write_base2new(out_dir: Path, table: list[dict], datasets, seeds, reference: bool) -> None:
    header = ["row", "method", "mode", "n_seeds"]
    for d in datasets:
        header += [f"{d}_{m}{e}" for m in ("base", "new", "hm") for e in ("", "_se")]
    header += [f"average_{m}{e}" for m in ("base", "new", "hm") for e in ("", "_se")]
    rows = []
    for r in table:
        line = [r["label"], r["method"], r["mode"], r["n_seeds"]]
        for d in datasets:
            v = r["per_dataset"][d]
            line += [v[f"{m}{e}"] for m in ("base", "new", "hm") for e in ("", "_se")]
        line += [r["average"][f"{m}{e}"] for m in ("base", "new", "hm") for e in ("", "_se")]
        rows.append(line)
    _write_csv(out_dir / "base2new.csv", header, rows)

    ours = {(r["method"], r["mode"]): r for r in table}
    avg_header = ["Method", "Base", "New", "HM", "Seeds"]
    avg_rows = []
    for r in table:
        a = r["average"]
        avg_rows.append(
            [
                r["label"],
                _fmt(a["base"], a["base_se"]),
                _fmt(a["new"], a["new_se"]),
                _fmt(a["hm"], a["hm_se"]),
                str(r["n_seeds"]),
            ]
        )
    if reference:
        avg_header += ["Δ Base", "Δ New", "Δ HM"]
        avg_rows = [r + ["", "", ""] for r in avg_rows]
        for method, (pb, pn, ph) in PUBLISHED.items():
            mine = ours.get((method, "zeroshot" if method == "zeroshot" else "baseline"))
            if mine is None:
                delta = ["–", "–", "–"]
            else:
                a = mine["average"]
                delta = [_signed(a["base"] - pb), _signed(a["new"] - pn), _signed(a["hm"] - ph)]
            label = f"{METHOD_NAMES[method]} (published)"
            avg_rows.append([label, f"{pb:.2f}", f"{pn:.2f}", f"{ph:.2f}", "3", *delta])

    per_header = ["Method"] + [f"{d} {m}" for d in datasets for m in ("base", "new", "HM")]
    per_rows = []
    for r in table:
        line = [r["label"]]
        for d in datasets:
            v = r["per_dataset"][d]
            line += [_fmt(v["base"]), _fmt(v["new"]), _fmt(v["hm"])]
        per_rows.append(line)

    text = [f"# {PROTOCOL_TITLES['base2new']}\n"]
    text.append(
        f"Average over {len(datasets)} dataset(s) ({', '.join(datasets)}): base and new are "
        "averaged over datasets and HM = 2·B·N/(B+N) is computed from those averages. "
        + _seed_note(seeds)
        + "\n"
    )
    text.append(md_table(avg_header, avg_rows))
    if reference:
        text.append(
            "(published): the 11-dataset averages of the papers (CLIP ViT-B/16, 16 shots, 3 "
            "seeds); Δ = ours − published, for the row of the same method.\n"
        )
    gains = _gains(table)
    if gains:
        text.append("## Prompt diffusion against its host method\n")
        text.append(
            f"Prompt diffusion minus the same method without it (average over datasets); ± is the "
            f"standard error of the per-seed differences. The project's target is at least "
            f"+{HM_TARGET:g} HM.\n"
        )
        text.append(
            md_table(
                ["Method", "Δ Base", "Δ New", "Δ HM", f"HM ≥ host + {HM_TARGET:g}"],
                [
                    [
                        g["label"],
                        *(_fmt_signed(g[k], g[f"{k}_se"]) for k in ("base", "new", "hm")),
                        "met" if g["target_met"] else "not met",
                    ]
                    for g in gains
                ],
            )
        )
    text.append("## Per dataset\n")
    text.append("HM per dataset from the seed-averaged base and new accuracy.\n")
    text.append(md_table(per_header, per_rows))
    _write_text(out_dir / "base2new.md", "\n".join(text))


def _write_transfer(out_dir: Path, protocol: str, table: list[dict], source, targets, seeds):
    header = ["row", "method", "mode", "n_seeds", source, f"{source}_se"]
    for t in targets:
        header += [t, f"{t}_se"]
    header += ["average", "average_se"]
    rows = []
    for r in table:
        line = [r["label"], r["method"], r["mode"], r["n_seeds"]]
        line += [r["source"]["accuracy"], r["source"]["se"]]
        for t in targets:
            line += [r["targets"][t]["accuracy"], r["targets"][t]["se"]]
        line += [r["average"]["accuracy"], r["average"]["se"]]
        rows.append(line)
    _write_csv(out_dir / f"{protocol}.csv", header, rows)

    what = "target" if protocol == "cross_dataset" else "variant"
    md_header = ["Method", f"{source} (source)", *targets, "Average", "Seeds"]
    md_rows = [
        [
            r["label"],
            _fmt(r["source"]["accuracy"], r["source"]["se"]),
            *[_fmt(r["targets"][t]["accuracy"], r["targets"][t]["se"]) for t in targets],
            _fmt(r["average"]["accuracy"], r["average"]["se"]),
            str(r["n_seeds"]),
        ]
        for r in table
    ]
    text = [f"# {PROTOCOL_TITLES[protocol]}\n"]
    text.append(
        f"Prompts learned on all classes of {source}; accuracy on the source, on each {what} "
        f"and the average over the {len(targets)} {what}(s) (the source is not in the average). "
        + _seed_note(seeds)
        + "\n"
    )
    text.append(md_table(md_header, md_rows))
    _write_text(out_dir / f"{protocol}.md", "\n".join(text))


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _bars(path: Path, labels: list[str], series: dict[str, tuple[list, list]], title: str):
    """Grouped bars: one group per row label, one bar per series (values, standard errors)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_series = len(series)
    width = 0.8 / max(n_series, 1)
    fig = Figure(figsize=(max(6.0, 1.3 * len(labels) + 2), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = list(range(len(labels)))
    for i, (name, (values, errors)) in enumerate(series.items()):
        offset = (i - (n_series - 1) / 2) * width
        yerr = [0.0 if e is None else e for e in errors]
        bars = ax.bar(
            [x + offset for x in xs],
            values,
            width,
            yerr=yerr if any(yerr) else None,
            capsize=3,
            label=name,
        )
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_xticks(xs, labels, rotation=20, ha="right")
    ax.set_ylabel("accuracy (%)")
    top = max((v for vals, _ in series.values() for v in vals if not math.isnan(v)), default=100)
    ax.set_ylim(0, top * 1.3 + 1)  # headroom for the legend
    ax.set_title(title)
    ax.legend(loc="upper left", ncols=n_series, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def make_report(inputs: list[Path], params: dict, out_dir: Path,
                diagnostics: list[Path] | None = None) -> None:
    """Write the protocol tables, figures and summary.json under `out_dir`.

    `params` = {"protocols": config.protocols, "methods": config.methods, "seeds": config.seeds,
    "reference": config.report.reference, "ablation_protocols": [...] (optional)}. Raises
    PdiffError naming the file for a missing or malformed input, and listing every evaluation
    the protocols need that is not among `inputs`.
    """
    protocols, methods, seeds, reference = _check_params(params)
    ablated = {p: protocols[p] for p in ablation_protocols(params, protocols)}
    out_dir = Path(out_dir)
    index = _index(Path(p) for p in inputs)
    acc = _Lookup(index)
    rows = _rows(methods)

    summary: dict[str, Any] = {
        "seeds": seeds,
        "methods": methods,
        "rows": [{"label": r.label, "method": r.method, "mode": r.mode} for r in rows],
        "hm_convention": "HM = 2*B*N/(B+N) from base and new averaged over datasets",
    }
    tables: dict[str, list[dict]] = {}
    if "base2new" in protocols:
        datasets = list(protocols["base2new"]["datasets"])
        tables["base2new"] = _base2new(rows, seeds, datasets, acc)
    for protocol in TRANSFER:
        if protocol in protocols:
            spec = protocols[protocol]
            tables[protocol] = _transfer(rows, seeds, spec["source"], list(spec["targets"]), acc)
    acc.raise_missing()
    used = set(acc.used)
    from pdiff import ablation  # the diagnosis and ablation tables (built on this module)

    if any(m != "zeroshot" for m in methods):
        dits = ablation.load_diagnostics(diagnostics or [])
        diag = ablation.diagnosis_rows(index, dits, methods)
        underfit = ablation.underfit_dits(dits)
        for u in underfit:
            log.warning("report: the DiT %s does not reproduce its training prompts (seen "
                        "cosine %.2f); raise diffusion.lr or diffusion.steps", u["dit"],
                        u["train_cosine"])
        ablation.write_diagnosis(out_dir, diag, underfit)
        summary["diagnosis"] = diag
        summary["underfit_dits"] = underfit
    if any(k[-1] != DEFAULT for k in index):  # prompt diffusion evaluated in other settings

        settings = ablation.ablation_rows(index, ablated, methods, seeds)
        ablation.write_ablation(out_dir, settings)
        summary["ablation"] = settings
        used |= {k for k in index if k[-1] != DEFAULT}
    unused = len(index) - len(used)
    if unused:
        log.warning("report: %d input evaluation(s) are not used by any protocol table", unused)

    if "base2new" in tables:
        datasets = list(protocols["base2new"]["datasets"])
        _write_base2new(out_dir, tables["base2new"], datasets, seeds, reference)
        summary["base2new"] = {
            "datasets": datasets,
            "rows": tables["base2new"],
            "diffusion_gain": _gains(tables["base2new"]),
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
        _bars(
            out_dir / "figures" / "base2new.png",
            labels,
            series,
            f"Base-to-new, average over {len(datasets)} dataset(s)",
        )
    for protocol in TRANSFER:
        if protocol in tables:
            spec = protocols[protocol]
            _write_transfer(
                out_dir, protocol, tables[protocol], spec["source"], list(spec["targets"]), seeds
            )
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
        _bars(out_dir / "figures" / "transfer.png", labels, series, "Transfer")

    if reference:
        summary["reference"] = {
            METHOD_NAMES[m]: {"base": b, "new": n, "hm": h} for m, (b, n, h) in PUBLISHED.items()
        }
    summary["cost"] = _cost(index, acc.used, rows)
    summary["inputs"] = sorted({r["_file"] for r in index.values()})
    _write_text(
        out_dir / "summary.json", json.dumps(_jsonable(summary), indent=2, sort_keys=True) + "\n"
    )
    log.info("report written to %s", out_dir)
