"""Small shared helpers: seeding, devices, atomic JSON output, logging."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pdiff.errors import PdiffError

if TYPE_CHECKING:  # torch is imported where it is used: the CLI and torch-free stages skip it
    import torch

log = logging.getLogger("pdiff")


def set_seed(seed: int) -> torch.Generator:
    """Seed every RNG we use and return a torch generator for explicit draws."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def get_device(prefer: str = "auto") -> torch.device:
    """CUDA when present (and not disabled), else CPU: the same code runs on both."""
    import torch

    if prefer == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a side path next to `path`; rename it into place only if the block succeeds.

    A killed or failing job therefore never leaves a file that looks finished.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically, floats at full precision."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                     metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically, with a canonical header (metadata keys sorted).

    safetensors keeps the metadata in a hash map whose order changes from process to process,
    so two equal runs would write files with different bytes (and sha256, which every artifact
    records as the backbone identity). The header is re-serialised in a fixed order; the tensor
    data and its offsets are unchanged, and the file reads back with any safetensors reader.
    """
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    if meta is not None:
        header = {"__metadata__": dict(sorted(meta.items())), **header}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to 8 bytes with spaces
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        f.write(memoryview(data)[8 + n :])


def read_json(path: str | os.PathLike, what: str, fix: str) -> Any:
    """The JSON in `path`; a missing or unreadable file is one PdiffError naming `what` it is
    (e.g. "report input") and the `fix`."""
    path = Path(path)
    if not path.is_file():
        raise PdiffError(f"{what} {path} does not exist; {fix}")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PdiffError(f"{what} {path} is not readable JSON ({exc}); {fix}") from None


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory in the heap instead of unmapping it.

    Per-sample prompts make activations of hundreds of MB (B x C text sequences). By default glibc
    maps such blocks fresh and returns them to the kernel on every free, so every step re-faults
    them: measured on a 2-core CPU, a third of an evaluation's time went to the kernel.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: serve blocks below 1 GiB from the heap
        libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD: do not hand the heap top back
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
