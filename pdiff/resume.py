"""Checkpoint-and-resume for the long training loops (pretrain, prompt training, DiT training).

A loop saves its whole state (weights, optimiser, RNG, step, history) every so often to
``<output>.resume`` and, when started again, continues from it: a killed or preempted job that
is rerun ends with the same result as an uninterrupted one. The file is written atomically, holds
only tensors and plain Python values (``torch.save``, read back with ``weights_only=True``: no
pickle of arbitrary objects), and carries a fingerprint of everything the result depends on
(parameters, input files, seed): a resume file left by another configuration is ignored, with a
log line, and replaced by the next checkpoint. The loop's owner removes it once the final output
is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from pdiff import __version__
from pdiff.utils import atomic_path

log = logging.getLogger(__name__)

FORMAT = "pdiff-resume/1"


def fingerprint(key: Any) -> str:
    """sha256 of the canonical JSON of `key` (sorted keys): equal inputs, equal fingerprint."""
    text = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (not cached: an input rewritten in place gets a new digest)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensor_digest(*tensors: torch.Tensor | None) -> str:
    """sha256 of tensors' dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def resume_path(out: str | os.PathLike) -> Path:
    """The resume file of an output: ``<out>.resume``, next to it."""
    out = Path(out)
    return out.with_name(out.name + ".resume")


class Resume:
    """The resume file of one training run, identified by a fingerprint of `key`.

    `key` is a JSON-able description of everything the result depends on; include the sha256
    of input files, not only their paths.
    """

    def __init__(self, out: str | os.PathLike, key: Any, what: str = "training") -> None:
        self.path = resume_path(out)
        self.fingerprint = fingerprint({"key": key, "pdiff": __version__})
        self.what = what

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is none (or only one of another run)."""
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unreadable (another torch, a damaged disk): start over
            log.warning("ignoring unreadable resume file %s (%s); %s starts over", self.path,
                        exc, self.what)
            return None
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            log.warning("ignoring %s: not a %s file; %s starts over", self.path, FORMAT,
                        self.what)
            return None
        if state.get("fingerprint") != self.fingerprint:
            log.warning("ignoring %s: it was written by a run with other parameters or inputs; "
                        "%s starts over (the file is replaced at the next checkpoint)",
                        self.path, self.what)
            return None
        return state["state"]

    def save(self, state: dict[str, Any]) -> None:
        """Write `state` (tensors and plain values only) atomically."""
        with atomic_path(self.path) as tmp:
            torch.save({"format": FORMAT, "fingerprint": self.fingerprint, "state": state}, tmp)

    def clear(self) -> None:
        """Remove the resume file: call once the final output is in place."""
        self.path.unlink(missing_ok=True)


def rng_state() -> dict[str, torch.Tensor]:
    """The global torch RNG state (CPU, and CUDA when present)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
