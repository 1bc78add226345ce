"""Writing the report's files (atomically: a reader never sees half a table) and formatting."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for r in rows:
                w.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in r])

    atomic_write(path, write)


def fmt(value: float | None, se: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{value:.2f}"
    if se is not None:
        text += f" ± {se:.2f}"
    return text


def signed(value: float) -> str:
    return f"{value:+.2f}"


def fmt_signed(value: float, se: float | None) -> str:
    return signed(value) + (f" ± {se:.2f}" if se is not None else "")


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A GitHub Markdown table; the first `left` columns left-aligned, the rest right-aligned."""

    def cell(x: Any) -> str:
        return str(x).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |"]
    lines.append("|" + "|".join(":---" if i < left else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def seed_note(seeds: Sequence[int]) -> str:
    return (
        f"Mean over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); ± is the standard error "
        "over seeds where there are at least two. Accuracy in %."
    )


def bars(path: Path, labels: list[str], series: dict[str, tuple[list, list]], title: str):
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
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj
