"""The diagnosis table: how well each method's DiTs predict per-sample prompts.

Per method: generated vs true per-sample deltas on images held out of DiT training (and, for
contrast, on images it trained on), how close generated prompts come to copying the store,
calibration, and the list of DiTs that did not learn their store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pdiff.errors import PdiffError
from pdiff.plan.names import DEFAULT
from pdiff.report.output import fmt, md_table, write_csv, write_text
from pdiff.report.protocols import METHOD_NAMES
from pdiff.report.records import Key, mean, se

# Seen cosine (generated vs true deltas on the DiT's own training images) under which a DiT is
# reported as not having learned its store: healthy demo DiTs range 0.28 (VPT) to 0.88 (CoOp).
UNDERFIT_COSINE = 0.1


def load_diagnostics(paths: list[Path]) -> list[dict]:
    """The DiT diagnostics files (`pdiff fit-diffusion --diagnostics`), naming a bad one."""
    from pdiff.utils import read_json  # lazy: pdiff.utils imports torch; `pdiff docs` must not

    out = []
    for path in paths:
        record = read_json(path, "diagnostics file", "rerun `pdiff fit-diffusion --diagnostics`")
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
    return (mean(values), se(values)) if values else (None, None)


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
    write_csv(out_dir / "diagnosis.csv", ["method", *keys],
               [[r["method"], *[r[k] for k in keys]] for r in rows])
    header = ["Method", "Held-out cosine", "Held-out correlation", "Norm ratio",
              "Seen cosine", "Memorisation", "ECE baseline", "ECE + PD", "Runs"]
    table = [[r["label"], *[fmt(r[k], r[f"{k}_se"]) for k in (
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
                       fmt(u["train_cosine"]), fmt(u["held_out_cosine"])] for u in underfit]),
        ]
    else:
        text.append(f"None: every DiT reproduces its training prompts (seen cosine ≥ "
                    f"{UNDERFIT_COSINE}).")
    write_text(out_dir / "diagnosis.md", "\n".join(text))
