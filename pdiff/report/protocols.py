"""The protocol tables: base-to-new, cross-dataset and domain generalisation.

One row per zero-shot CLIP and per host method without and with prompt diffusion; every number
is the mean over seeds with the standard error of the per-seed quantity (e.g. the per-seed HM of
the per-seed dataset averages).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pdiff.errors import PdiffError
from pdiff.plan.names import DEFAULT, VAL
from pdiff.plan.paths import run_id
from pdiff.report.output import fmt, fmt_signed, md_table, seed_note, signed, write_csv, write_text
from pdiff.report.published import PUBLISHED_B2N, PUBLISHED_TARGETS, PUBLISHED_TRANSFER
from pdiff.report.records import Key, is_number, make_key, mean, se, variant_label

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


#: Protocol key -> title.
PROTOCOL_TITLES = {
    "base2new": "Base-to-new generalisation",
    "cross_dataset": "Cross-dataset transfer",
    "domain_generalization": "Domain generalisation",
}


#: What prompt diffusion aims to add to its host method's base-to-new HM (points).
HM_TARGET = 3.0


def harmonic_mean(base: float, new: float) -> float:
    """HM = 2·B·N/(B+N) (0 when both are 0)."""
    return 2.0 * base * new / (base + new) if base + new else 0.0


#: The tag of prompt diffusion as configured, beside a preset's rows (e.g. the paper's).
PDIFF = "pdiff"


@dataclass(frozen=True)
class Row:
    """One row of every table: zero-shot CLIP, or a host method in baseline or diffusion mode.
    A diffusion row reads the evaluations of one setting (`default`: as configured) and, beside
    a preset, is tagged with the preset's name or `pdiff`."""

    method: str
    mode: str
    setting: str = DEFAULT
    tag: str | None = None

    @property
    def label(self) -> str:
        if self.mode == "zeroshot":
            return METHOD_NAMES["zeroshot"]
        name = METHOD_NAMES.get(self.method, self.method)
        if self.mode == "baseline":
            return name
        return f"{name} + prompt diffusion" + (f" ({self.tag})" if self.tag else "")


def published_label(method: str) -> str:
    return f"{METHOD_NAMES.get(method, method)} (published)"


def _host_row(ours: dict, method: str) -> dict | None:
    """Our row of `method` without prompt diffusion (zero-shot CLIP's own row for zeroshot)."""
    return ours.get((method, "zeroshot" if method == "zeroshot" else "baseline"))


def _sources(refs: dict[str, str]) -> str:
    """The source of each published row, one line each."""
    return "".join(f"- {published_label(m)}: {ref}\n" for m, ref in refs.items())


class Lookup:
    """Accuracy lookups that collect every missing evaluation for one clear error."""

    def __init__(self, index: dict[Key, dict], variant: str = DEFAULT):
        self.index, self.variant = index, variant
        self.missing: list[str] = []
        self.used: set[Key] = set()

    def __call__(self, row: Row, seed, train_dataset, train_classes, target, split) -> float:
        variant = DEFAULT if row.mode != "diffusion" else (
            self.variant if row.setting == DEFAULT else row.setting)
        key = make_key(row.mode, row.method, train_dataset, train_classes, seed, target, split,
                   variant)
        record = self.index.get(key)
        if record is None:
            if row.mode == "zeroshot":
                where = f"results/zeroshot/{target}.json"
            else:
                run = run_id(train_dataset, row.method, train_classes, seed)
                where = f"runs/{run}/eval/{'val/' if split == VAL else ''}{row.mode}.json"
            setting = f" ({variant})" if variant != DEFAULT else ""
            self.missing.append(f"{row.label}{setting} on {target}/{split} (e.g. {where})")
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


def table_rows(methods: Sequence[str], presets: dict[str, dict[str, dict]] | None = None
               ) -> list[Row]:
    """Zero-shot CLIP, then per method its host row, prompt diffusion as configured and, per
    preset, prompt diffusion in the preset's setting (`presets`: preset -> method -> its
    {stage: folder})."""
    presets = presets or {}
    rows = [Row("zeroshot", "zeroshot")]
    for m in methods:
        if m != "zeroshot":
            rows += [Row(m, "baseline"), Row(m, "diffusion", tag=PDIFF if presets else None)]
            rows += [Row(m, "diffusion", variant_label(p[m]), tag=name)
                     for name, p in presets.items()]
    return rows


def _row_seeds(row: Row, seeds: Sequence[int]) -> list:
    return [None] if row.mode == "zeroshot" else list(seeds)


def _row_header(row, row_seeds) -> dict:
    """The identifying fields every summary row starts with."""
    return {
        "label": row.label,
        "method": row.method,
        "mode": row.mode,
        "tag": row.tag,
        "n_seeds": len(row_seeds),
        "seeds": [s for s in row_seeds if s is not None],
    }


def base2new_table(rows, seeds, datasets, acc) -> list[dict]:
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
            base, new = mean(bs), mean(ns)
            per_dataset[d] = {
                "base": base,
                "base_se": se(bs),
                "new": new,
                "new_se": se(ns),
                "hm": harmonic_mean(base, new),
                "hm_se": se([harmonic_mean(x, y) for x, y in zip(bs, ns, strict=True)]),
            }
        avg_b = [mean([b[s][d] for d in datasets]) for s in row_seeds]
        avg_n = [mean([n[s][d] for d in datasets]) for s in row_seeds]
        base, new = mean(avg_b), mean(avg_n)
        average = {
            "base": base,
            "base_se": se(avg_b),
            "new": new,
            "new_se": se(avg_n),
            "hm": harmonic_mean(base, new),
            "hm_se": se([harmonic_mean(x, y) for x, y in zip(avg_b, avg_n, strict=True)]),
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


def _dataset_average(row: dict, seed: str) -> dict[str, float]:
    """One seed's base and new accuracy of a base-to-new row, averaged over datasets."""
    per_dataset = row["per_seed"][seed].values()
    return {k: mean([v[k] for v in per_dataset]) for k in ("base", "new")}


def diffusion_gains(table: list[dict]) -> list[dict]:
    """Prompt diffusion minus its host, per method: base, new and HM of the dataset averages,
    with the standard error of the paired per-seed differences."""
    hosts = {r["method"]: r for r in table if r["mode"] == "baseline"}
    out = []
    for pd in table:
        method = pd["method"]
        host = hosts.get(method)
        if pd["mode"] != "diffusion" or host is None:
            continue
        seeds = [s for s in host["per_seed"] if s in pd["per_seed"]]
        diffs: dict[str, list[float]] = {"base": [], "new": [], "hm": []}
        for s in seeds:
            h, p = _dataset_average(host, s), _dataset_average(pd, s)
            for k in ("base", "new"):
                diffs[k].append(p[k] - h[k])
            hm = harmonic_mean(p["base"], p["new"]) - harmonic_mean(h["base"], h["new"])
            diffs["hm"].append(hm)
        name = METHOD_NAMES.get(method, method)
        gain = {"method": method, "tag": pd["tag"],
                "label": name + (f" ({pd['tag']})" if pd["tag"] else ""), "n_seeds": len(seeds)}
        for k in ("base", "new", "hm"):
            gain[k] = pd["average"][k] - host["average"][k]
            gain[f"{k}_se"] = se(diffs[k])
        gain["target_met"] = gain["hm"] >= HM_TARGET
        out.append(gain)
    return out


def transfer_table(rows, seeds, source, targets, acc) -> list[dict]:
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
            columns[t] = {"accuracy": mean(vals), "se": se(vals)}
        avg = [mean([a[s][t] for t in targets]) for s in row_seeds]
        out.append(
            {
                **_row_header(row, row_seeds),
                "source": {"dataset": source, **columns[source]},
                "targets": {t: columns[t] for t in targets},
                "average": {"accuracy": mean(avg), "se": se(avg)},
                "per_seed": {str(s): a[s] for s in row_seeds},
            }
        )
    return out


def _numbers(records: Sequence[dict], key: str) -> list[float]:
    return [float(r[key]) for r in records if is_number(r.get(key))]


def evaluation_cost(index: dict[Key, dict], used: set[Key], rows: Sequence[Row]) -> dict[str, dict]:
    """Per row: total evaluation seconds, mean images/s, NFE and ECE over the evaluations used."""
    out = {}
    for row in rows:
        recs = [
            index[k]
            for k in sorted(used, key=repr)
            if k[0] == row.mode and (row.mode == "zeroshot" or k[1] == row.method)
            and (row.mode != "diffusion" or k[-1] == row.setting)
        ]
        if not recs:
            continue
        entry: dict[str, Any] = {"evaluations": len(recs)}
        entry["seconds"] = math.fsum(_numbers(recs, "seconds"))
        for key in ("images_per_second", "nfe", "ece"):
            values = _numbers(recs, key)
            entry[key] = mean(values) if values else None
        out[row.label] = entry
    return out


def write_base2new(out_dir: Path, table: list[dict], datasets, seeds, reference: bool) -> None:
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
    write_csv(out_dir / "base2new.csv", header, rows)

    ours = {(r["method"], r["mode"]): r for r in table}
    avg_header = ["Method", "Base", "New", "HM", "Seeds"]
    avg_rows = []
    for r in table:
        a = r["average"]
        avg_rows.append(
            [
                r["label"],
                fmt(a["base"], a["base_se"]),
                fmt(a["new"], a["new_se"]),
                fmt(a["hm"], a["hm_se"]),
                str(r["n_seeds"]),
            ]
        )
    if reference:
        avg_header += ["Δ Base", "Δ New", "Δ HM"]
        avg_rows = [r + ["", "", ""] for r in avg_rows]
        for method, pub in PUBLISHED_B2N.items():
            mine = _host_row(ours, method)
            published = {"base": pub.base, "new": pub.new, "hm": pub.hm}
            delta = [
                "–" if mine is None else signed(mine["average"][k] - published[k])
                for k in ("base", "new", "hm")
            ]
            avg_rows.append(
                [published_label(method), *(fmt(v) for v in published.values()), "3", *delta]
            )

    per_header = ["Method"] + [f"{d} {m}" for d in datasets for m in ("base", "new", "HM")]
    per_rows = []
    for r in table:
        line = [r["label"]]
        for d in datasets:
            v = r["per_dataset"][d]
            line += [fmt(v["base"]), fmt(v["new"]), fmt(v["hm"])]
        per_rows.append(line)

    text = [f"# {PROTOCOL_TITLES['base2new']}\n"]
    text.append(
        f"Average over {len(datasets)} dataset(s) ({', '.join(datasets)}): base and new are "
        "averaged over datasets and HM = 2·B·N/(B+N) is computed from those averages. "
        + seed_note(seeds)
        + "\n"
    )
    text.append(md_table(avg_header, avg_rows))
    if reference:
        text.append(
            "(published): the 11-dataset averages of the papers (CLIP ViT-B/16, 16 shots, 3 "
            "seeds); Δ = ours − published, for the row of the same method.\n"
        )
        text.append(_sources({m: p.ref for m, p in PUBLISHED_B2N.items()}))
    gains = diffusion_gains(table)
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
                        *(fmt_signed(g[k], g[f"{k}_se"]) for k in ("base", "new", "hm")),
                        "met" if g["target_met"] else "not met",
                    ]
                    for g in gains
                ],
            )
        )
    text.append("## Per dataset\n")
    text.append("HM per dataset from the seed-averaged base and new accuracy.\n")
    text.append(md_table(per_header, per_rows))
    write_text(out_dir / "base2new.md", "\n".join(text))


def write_transfer(out_dir: Path, protocol: str, table: list[dict], source, targets, seeds,
                   reference: bool) -> None:
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
    write_csv(out_dir / f"{protocol}.csv", header, rows)

    what = "target" if protocol == "cross_dataset" else "variant"
    md_header = ["Method", f"{source} (source)", *targets, "Average", "Seeds"]
    md_rows = [
        [
            r["label"],
            fmt(r["source"]["accuracy"], r["source"]["se"]),
            *[fmt(r["targets"][t]["accuracy"], r["targets"][t]["se"]) for t in targets],
            fmt(r["average"]["accuracy"], r["average"]["se"]),
            str(r["n_seeds"]),
        ]
        for r in table
    ]
    published = PUBLISHED_TRANSFER[protocol] if reference else {}
    if published:
        ours = {(r["method"], r["mode"]): r for r in table}
        md_header += ["Δ Source", "Δ Average"]
        md_rows = [r + ["", ""] for r in md_rows]
        for method, pub in published.items():
            mine = _host_row(ours, method)
            delta = ["–", "–"]
            if mine is not None:
                delta[1] = signed(mine["average"]["accuracy"] - pub.average)
                if pub.imagenet is not None:
                    delta[0] = signed(mine["source"]["accuracy"] - pub.imagenet)
            md_rows.append([published_label(method), fmt(pub.imagenet), *["–"] * len(targets),
                            fmt(pub.average), "3", *delta])
    text = [f"# {PROTOCOL_TITLES[protocol]}\n"]
    text.append(
        f"Prompts learned on all classes of {source}; accuracy on the source, on each {what} "
        f"and the average over the {len(targets)} {what}(s) (the source is not in the average). "
        + seed_note(seeds)
        + "\n"
    )
    text.append(md_table(md_header, md_rows))
    if published:
        text.append(
            f"(published): the papers' accuracy on ImageNet, the source, and the average over "
            f"{PUBLISHED_TARGETS[protocol]} (CLIP ViT-B/16, 16 shots, 3 seeds; – where no source "
            "gave the number); Δ = ours − published, for the row of the same method.\n"
        )
        text.append(_sources({m: p.ref for m, p in published.items()}))
    write_text(out_dir / f"{protocol}.md", "\n".join(text))
