"""Where a result came from: the code's commit and the machine, recorded by the report in
summary.json and stamped on every page generated from it (torch-free)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

#: The checkout the running code belongs to (an editable install's source tree).
CODE_ROOT = Path(__file__).resolve().parents[1]


def git_commit(repo: Path = CODE_ROOT) -> str:
    """The short commit of HEAD in `repo` ("+dirty" with uncommitted changes to tracked files),
    or "unknown" (no git, not a repository)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo,
                              capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=repo, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = head.stdout.strip()
    if not commit:
        return "unknown"
    return commit + ("+dirty" if dirty.stdout.strip() else "")


def machine(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, int | None, bool | None]:
    """CPU model, usable CPUs and whether AVX-512 is present (None where unknown: no
    /proc/cpuinfo outside Linux). AVX-512 matters: it changes CPU timings by 2-3x here."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        text = ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name") or fields.get("Model") or "CPU unknown"
    flags = fields.get("flags")
    avx512 = None if flags is None else "avx512f" in flags.split()
    try:  # the CPUs this process may use (a container's share, not the host's)
        cpus: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count()
    return model, cpus, avx512


def describe_machine(cpu: str, cpus: int | None, avx512: bool | None) -> str:
    """`machine()`'s triple in words, as docs and benchmarks print it."""
    avx = {True: "AVX-512", False: "no AVX-512", None: "AVX-512 unknown"}[avx512]
    return f"{cpu}, {f'{cpus} CPUs' if cpus else 'CPUs unknown'}, {avx}"


def provenance(repo: Path = CODE_ROOT, cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """summary.json's record of the code and machine that produced it."""
    cpu, cpus, avx512 = machine(cpuinfo)
    return {"commit": git_commit(repo), "cpu": cpu, "cpus": cpus, "avx512": avx512}
