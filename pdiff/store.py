"""The HDF5 prompt store: one overfitted prompt per training sample, plus its provenance.

Layout (schema version 1): the HDF5 datasets are declared once, in :data:`FIELDS` (name, dtype,
shape, meaning, fill value of unwritten rows); creating, resuming, writing and reading a store
all follow that declaration. Per-sample datasets are chunked by rows and gzip-compressed so that
plain ``h5ls``/``h5dump`` can read them, which would not be true of h5py's lzf filter.

Attributes: ``schema_version``, ``pdiff_version`` and ``json_attrs`` are written by this
module; the caller supplies ``method``, ``dataset``, ``seed``, ``overfit``, ``backbone``,
``prompt_spec`` and any extra keys. Scalars (str/int/float/bool) are stored as they are;
anything else is stored as a JSON string and its key is listed in ``json_attrs`` so that
:func:`read_store` decodes exactly those keys back.

The writer works on ``<path>.partial`` and renames it into place only once every row is
done, so a file at ``<path>`` is always complete; an interrupted run resumes from the
rows already marked done.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

import pdiff
from pdiff.errors import PdiffError

log = logging.getLogger("pdiff.store")

SCHEMA_VERSION = 1
#: Attributes every store must carry (supplied by the caller of :func:`open_writer`).
REQUIRED_ATTRS = ("method", "dataset", "seed", "overfit", "backbone", "prompt_spec")
#: Attributes owned by this module; callers may not set them.
RESERVED_ATTRS = ("schema_version", "pdiff_version", "json_attrs")
#: The keys of the backbone identity compared by :func:`read_store`.
BACKBONE_KEYS = ("model", "pretrained", "sha256")
#: Rows per chunk: big enough to compress well, small enough that a batch write touches
#: few chunks.
CHUNK_ROWS = 64
_COMPRESSION = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
_CREATED_BY = "`pdiff overfit` (the overfit stage of the workflow)"
STRING = h5py.string_dtype("utf-8")


@dataclass(frozen=True)
class Field:
    """One HDF5 dataset of the store."""

    name: str
    #: numpy dtype, or :data:`STRING` (variable-length UTF-8).
    dtype: Any
    #: In the store's dimensions: N samples, T x D packed prompt tokens, F feature width. A
    #: leading N makes it per-sample (chunked by rows).
    shape: tuple[str, ...]
    meaning: str
    #: Given whole by the caller of :func:`open_writer` (and compared on resume); otherwise
    #: written row by row by :meth:`StoreWriter.write`.
    given: bool = False
    #: Value of a row not yet written (None: HDF5's zero).
    fill: Any = None
    optional: bool = False
    #: What a mismatch with a partial store usually means (for the resume error).
    hint: str = ""

    @property
    def per_row(self) -> bool:
        return self.shape[:1] == ("N",)

    def shape_in(self, dims: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(dims[k] for k in self.shape)

    def load(self, raw: Any) -> Any:
        """Stored values in their Python form: strings decoded, arrays in the declared dtype."""
        if self.dtype is STRING:
            return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in raw]
        return np.asarray(raw, dtype=self.dtype)


#: Every dataset of the store, in creation order; :class:`PromptStore` has one attribute each.
FIELDS: tuple[Field, ...] = (
    Field("prompts", np.float32, ("N", "T", "D"), "packed prompt of each sample after overfitting"),
    Field("init_prompt", np.float32, ("T", "D"), "packed prompt of the host method (the start)",
          given=True, hint="the host prompt was retrained?"),
    Field("features", np.float32, ("N", "F"), "frozen CLIP image feature (the DiT condition)"),
    Field("labels", np.int64, ("N",), "class index", given=True),
    Field("sample_ids", STRING, ("N",), "image path relative to the data root", given=True,
          hint="different training split, shots or seed?"),
    # Losses are NaN until written, so an unwritten row can never pass for a real loss.
    Field("loss_before", np.float32, ("N",), "per-sample loss with init_prompt", fill=np.nan),
    Field("loss_after", np.float32, ("N",), "per-sample loss after overfitting", fill=np.nan),
    Field("done", np.bool_, ("N",), "row written (the completion mask used for resuming)",
          fill=False),
    Field("token_mask", np.bool_, ("T", "D"), "real (True) vs padded (False) entries",
          given=True, optional=True),
)
_FIELD = {f.name: f for f in FIELDS}
#: The completion mask: written last, after the rows it marks are flushed.
DONE = "done"
#: What :meth:`StoreWriter.write` writes per row (besides the mask), in its argument order.
WRITTEN = tuple(f for f in FIELDS if not f.given and f.name != DONE)


def partial_path(path: str | os.PathLike) -> Path:
    """The side file a writer works on before the store is complete."""
    path = Path(path)
    return path.with_name(path.name + ".partial")


# --------------------------------------------------------------------------- attributes


def _to_python(value: Any) -> Any:
    """Numpy scalars -> Python scalars, so comparisons and JSON behave."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def _encode_attrs(attrs: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Map user attributes to what is stored in HDF5, and list the JSON-encoded keys."""
    stored: dict[str, Any] = {}
    json_keys: list[str] = []
    for key, value in attrs.items():
        if not isinstance(key, str):
            raise PdiffError(f"prompt store attribute names must be strings, got {key!r}")
        value = _to_python(value)
        if isinstance(value, (str, bool, int, float)):
            stored[key] = value
        else:
            try:
                stored[key] = json.dumps(value, sort_keys=True)
            except TypeError as exc:
                raise PdiffError(
                    f"prompt store attribute {key!r} is not JSON-serialisable ({exc}); "
                    "pass plain dicts/lists/numbers/strings"
                ) from exc
            json_keys.append(key)
    return stored, sorted(json_keys)


def _decode_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`_encode_attrs` (keeps the module-owned attributes too)."""
    out = {key: _to_python(value) for key, value in raw.items()}
    for key, value in out.items():
        if isinstance(value, bytes):
            out[key] = value.decode("utf-8")
    json_keys = json.loads(out.pop("json_attrs", "[]"))
    for key in json_keys:
        if key in out:
            out[key] = json.loads(out[key])
    return out


def _user_attrs(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The caller-supplied part of the stored attributes, in stored (encoded) form."""
    out = {key: _to_python(value) for key, value in raw.items() if key not in RESERVED_ATTRS}
    return {k: (v.decode("utf-8") if isinstance(v, bytes) else v) for k, v in out.items()}


def _backbone_identity(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return {"model": value}
    if not isinstance(value, Mapping):
        return {}
    return {key: value.get(key) for key in BACKBONE_KEYS}


# --------------------------------------------------------------------------- writer


def _is_disk_full(exc: OSError) -> bool:
    # h5py often raises OSError without errno set and only the C library's text, which
    # carries "errno = 28" / "No space left on device".
    if exc.errno == errno.ENOSPC:
        return True
    text = str(exc)
    return "No space left on device" in text or f"errno = {errno.ENOSPC}," in text


class StoreWriter:
    """Writes rows into ``<path>.partial``; :meth:`finalize` renames it to ``<path>``.

    Use as a context manager; leaving the block without :meth:`finalize` closes the
    file and keeps the partial store for a later resume.
    """

    def __init__(self, path: Path, h5: h5py.File, resumed: bool) -> None:
        self.path = path
        self.partial = partial_path(path)
        self.resumed = resumed
        self._h5: h5py.File | None = h5
        self._n = int(h5[DONE].shape[0])
        self._done = np.asarray(h5[DONE][...], dtype=bool)
        self._row_shapes = {f.name: tuple(h5[f.name].shape[1:]) for f in WRITTEN}

    # -- state ---------------------------------------------------------------------

    @property
    def num_samples(self) -> int:
        return self._n

    def pending(self) -> np.ndarray:
        """Sorted indices of the rows not yet written."""
        return np.flatnonzero(~self._done).astype(np.int64)

    def _file(self) -> h5py.File:
        if self._h5 is None:
            raise PdiffError(f"prompt store writer for {self.path} is already closed")
        return self._h5

    # -- writing -------------------------------------------------------------------

    def write(
        self,
        indices: Sequence[int] | np.ndarray,
        prompts: np.ndarray,
        features: np.ndarray,
        loss_before: np.ndarray,
        loss_after: np.ndarray,
    ) -> None:
        """Write rows ``indices``, mark them done and flush to disk.

        The data is flushed before the rows are marked done, so a row flagged done on
        disk always holds its data, and a SIGKILL loses at most the current batch.
        """
        h5 = self._file()
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        k = idx.size
        if k == 0:
            return
        given = (prompts, features, loss_before, loss_after)
        rows: dict[str, np.ndarray] = {}
        for f, value in zip(WRITTEN, given, strict=True):
            arr = np.asarray(value, dtype=f.dtype)
            shape = (k, *self._row_shapes[f.name])
            # One value per row may come as a column.
            rows[f.name] = arr.reshape(-1) if len(shape) == 1 else arr
            if rows[f.name].shape != shape:
                raise ValueError(f"{f.name} shape {arr.shape} != {shape}")
        if idx.min() < 0 or idx.max() >= self._n:
            raise ValueError(f"indices out of range [0, {self._n})")
        # h5py fancy indexing needs strictly increasing indices.
        order = np.argsort(idx, kind="stable")
        idx = idx[order]
        if np.any(np.diff(idx) == 0):
            raise ValueError("duplicate indices in one write")
        sel = idx.tolist()
        try:
            for name, arr in rows.items():
                h5[name][sel] = arr[order]
            h5.flush()
            h5[DONE][sel] = np.ones(k, dtype=bool)
            h5.flush()
        except OSError as exc:
            if _is_disk_full(exc):
                self._close_quietly()
                raise PdiffError(
                    f"disk full while writing the prompt store {self.partial}; the partial "
                    f"store is kept ({int(self._done.sum())}/{self._n} rows done): free some "
                    "space and rerun the same command to resume"
                ) from exc
            raise
        self._done[idx] = True

    def finalize(self) -> Path:
        """Check every row is done, close the file and rename it to the final path."""
        h5 = self._file()
        missing = int((~self._done).sum())
        if missing:
            raise PdiffError(
                f"prompt store {self.partial} still has {missing}/{self._n} rows pending; "
                "write them before finalize() (rerun `pdiff overfit` to resume)"
            )
        try:
            h5.flush()
            h5.close()
            self._h5 = None
            # Make the bytes durable before the rename makes the file look finished.
            fd = os.open(self.partial, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            if _is_disk_full(exc):
                self._close_quietly()
                raise PdiffError(
                    f"disk full while finalising the prompt store {self.partial}; the partial "
                    "store is kept: free some space and rerun the same command to resume"
                ) from exc
            raise
        os.replace(self.partial, self.path)
        log.info("prompt store complete: %s (%d samples)", self.path, self._n)
        return self.path

    # -- closing -------------------------------------------------------------------

    def _close_quietly(self) -> None:
        if self._h5 is not None:
            try:
                self._h5.close()
            except Exception:  # best effort: the file may be unusable after a failed write
                log.debug("closing %s after an error failed", self.partial, exc_info=True)
            self._h5 = None

    def close(self) -> None:
        """Close without finalising: the partial store stays for a resume."""
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
            log.info(
                "prompt store left partial for resume: %s (%d/%d rows done)",
                self.partial,
                int(self._done.sum()),
                self._n,
            )

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self._close_quietly()


def _create(
    partial: Path,
    *,
    given: dict[str, Any],
    dims: dict[str, int],
    stored_attrs: dict[str, Any],
    json_keys: list[str],
) -> h5py.File:
    rows = min(CHUNK_ROWS, dims["N"])
    h5 = h5py.File(partial, "w")
    try:
        for f in FIELDS:
            if f.optional and given.get(f.name) is None:
                continue
            shape = f.shape_in(dims)
            layout: dict[str, Any] = {}
            if f.per_row:
                layout["chunks"] = (rows, *shape[1:])
                # gzip would squeeze only the heap pointers of variable-length strings.
                if f.dtype is not STRING:
                    layout.update(_COMPRESSION)
            if f.given:
                h5.create_dataset(f.name, data=given[f.name], dtype=f.dtype, **layout)
            else:
                h5.create_dataset(f.name, shape=shape, dtype=f.dtype, fillvalue=f.fill, **layout)
        h5.attrs["schema_version"] = SCHEMA_VERSION
        h5.attrs["pdiff_version"] = pdiff.__version__
        h5.attrs["json_attrs"] = json.dumps(json_keys)
        for key, value in stored_attrs.items():
            h5.attrs[key] = value
        h5.flush()
    except BaseException:
        h5.close()
        partial.unlink(missing_ok=True)
        raise
    return h5


def _check_compatible(
    h5: h5py.File,
    *,
    given: dict[str, Any],
    dims: dict[str, int],
    stored_attrs: dict[str, Any],
) -> str | None:
    """Return a description of the first mismatch with the requested store, or None."""
    version = _to_python(h5.attrs.get("schema_version"))
    if version != SCHEMA_VERSION:
        return f"schema_version {version} != {SCHEMA_VERSION}"
    for f in FIELDS:
        wanted = not f.optional or given.get(f.name) is not None
        if f.name not in h5:
            if wanted:
                return f"dataset {f.name!r} is missing"
            continue
        if not wanted:
            return f"dataset {f.name!r} is present but not wanted now"
        shape = f.shape_in(dims)
        if h5[f.name].shape != shape:
            return f"{f.name} shape {h5[f.name].shape} != {shape}"
        if f.given and not np.array_equal(f.load(h5[f.name][...]), f.load(given[f.name])):
            return f"{f.name} differs" + (f" ({f.hint})" if f.hint else "")
    old = _user_attrs(h5.attrs)
    if old != stored_attrs:
        keys = sorted(k for k in set(old) | set(stored_attrs) if old.get(k) != stored_attrs.get(k))
        return "attributes differ: " + ", ".join(
            f"{k} (partial: {old.get(k)!r}, now: {stored_attrs.get(k)!r})" for k in keys
        )
    return None


def open_writer(
    path: str | os.PathLike,
    *,
    sample_ids: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    init_prompt: np.ndarray,
    token_shape: tuple[int, int],
    feature_dim: int,
    attrs: Mapping[str, Any],
    token_mask: np.ndarray | None = None,
) -> StoreWriter:
    """Open (create or resume) the partial store next to ``path``.

    A compatible ``<path>.partial`` (same sample ids, labels, shapes, init prompt, token
    mask and attributes) is resumed, keeping its done rows; an incompatible one is an
    error, since silently mixing prompts from two configurations would corrupt the store.
    """
    path = Path(path)
    partial = partial_path(path)
    ids = [str(s) for s in sample_ids]
    n = len(ids)
    if n == 0:
        raise PdiffError(f"cannot create prompt store {path}: no training samples")
    if len(set(ids)) != n:
        raise PdiffError(f"cannot create prompt store {path}: sample_ids are not unique")
    labels_arr = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels_arr.shape != (n,):
        raise PdiffError(f"prompt store {path}: {labels_arr.size} labels for {n} sample ids")
    t, d = (int(s) for s in token_shape)
    init = np.asarray(init_prompt, dtype=np.float32)
    if init.shape != (t, d):
        raise PdiffError(f"prompt store {path}: init_prompt shape {init.shape} != {(t, d)}")
    mask = None
    if token_mask is not None:
        mask = np.asarray(token_mask, dtype=bool)
        if mask.shape != (t, d):
            raise PdiffError(f"prompt store {path}: token_mask shape {mask.shape} != {(t, d)}")
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise PdiffError(
            f"prompt store {path}: missing required attributes {missing}; "
            f"a store must record {list(REQUIRED_ATTRS)}"
        )
    reserved = [k for k in RESERVED_ATTRS if k in attrs]
    if reserved:
        raise PdiffError(f"prompt store {path}: attributes {reserved} are set by pdiff itself")
    stored_attrs, json_keys = _encode_attrs(attrs)
    spec = {
        "given": {"sample_ids": ids, "labels": labels_arr, "init_prompt": init,
                  "token_mask": mask},
        "dims": {"N": n, "T": t, "D": d, "F": int(feature_dim)},
        "stored_attrs": stored_attrs,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        log.warning("prompt store %s exists and will be replaced on finalize", path)

    if partial.exists():
        try:
            h5 = h5py.File(partial, "r+")
        except OSError as exc:
            raise PdiffError(
                f"cannot open the partial prompt store {partial} ({exc}); it is probably "
                f"truncated: delete {partial} and rerun to start over"
            ) from exc
        try:
            problem = _check_compatible(h5, **spec)
        except Exception:
            h5.close()
            raise
        if problem is not None:
            h5.close()
            raise PdiffError(
                f"the partial prompt store {partial} belongs to a different run: {problem}; "
                f"delete {partial} to start over"
            )
        writer = StoreWriter(path, h5, resumed=True)
        log.info(
            "resuming prompt store %s: %d/%d rows already done",
            partial,
            n - writer.pending().size,
            n,
        )
        return writer

    h5 = _create(partial, json_keys=json_keys, **spec)
    log.info("creating prompt store %s (%d samples, tokens %dx%d)", partial, n, t, d)
    return StoreWriter(path, h5, resumed=False)


# --------------------------------------------------------------------------- reader


@dataclass
class PromptStore:
    """A complete prompt store loaded into memory: one attribute per :data:`FIELDS` entry, in
    its order, plus the decoded attributes."""

    prompts: np.ndarray
    init_prompt: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    sample_ids: list[str]
    loss_before: np.ndarray
    loss_after: np.ndarray
    done: np.ndarray
    token_mask: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return int(self.prompts.shape[0])

    @property
    def token_shape(self) -> tuple[int, int]:
        return (int(self.prompts.shape[1]), int(self.prompts.shape[2]))

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def method(self) -> str | None:
        return self.attrs.get("method")


@contextmanager
def _open_checked(
    path: str | os.PathLike,
    expect_method: str | None,
    expect_backbone: Mapping[str, Any] | None,
) -> Iterator[tuple[h5py.File, dict[str, Any]]]:
    """The open store and its attributes, after the schema, completeness and provenance checks.

    ``expect_backbone`` is compared on the keys ``model``, ``pretrained`` and ``sha256``
    that it sets to a non-None value (so a caller that does not know the hash can omit it).
    """
    path = Path(path)
    if not path.exists():
        partial = partial_path(path)
        hint = (
            f" ({partial} exists: the run was interrupted; rerun it to resume)"
            if partial.exists() else ""
        )
        raise PdiffError(f"prompt store {path} not found{hint}; it is created by {_CREATED_BY}")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise PdiffError(
            f"cannot read prompt store {path} ({exc}); delete it and rerun `pdiff overfit`"
        ) from exc
    with h5:
        version = _to_python(h5.attrs.get("schema_version"))
        if version != SCHEMA_VERSION:
            raise PdiffError(
                f"prompt store {path} has schema_version {version}, this pdiff reads "
                f"{SCHEMA_VERSION}; rebuild it with `pdiff overfit`"
            )
        missing = [f.name for f in FIELDS if not f.optional and f.name not in h5]
        if missing:
            raise PdiffError(
                f"prompt store {path} lacks datasets {missing}; rebuild it with `pdiff overfit`"
            )
        attrs = _decode_attrs(h5.attrs)
        done = np.asarray(h5[DONE][...], dtype=bool)
        if not done.all():
            raise PdiffError(
                f"prompt store {path} is incomplete ({int(done.sum())}/{done.size} rows done); "
                "rerun `pdiff overfit` to complete it"
            )
        stored_method = attrs.get("method")
        if expect_method is not None and stored_method != expect_method:
            raise PdiffError(
                f"prompt store {path} was built for method {stored_method}, expected "
                f"{expect_method}; rerun `pdiff overfit` for method {expect_method}"
            )
        if expect_backbone is not None:
            stored = _backbone_identity(attrs.get("backbone"))
            expected = _backbone_identity(expect_backbone)
            diffs = [
                f"{k}: store {stored.get(k)!r} vs expected {v!r}"
                for k, v in expected.items()
                if v is not None and stored.get(k) != v
            ]
            if diffs:
                raise PdiffError(
                    f"prompt store {path} was built with a different backbone "
                    f"({'; '.join(diffs)}); rerun `pdiff overfit` with the current backbone"
                )
        yield h5, attrs


def read_store(
    path: str | os.PathLike,
    *,
    expect_method: str | None = None,
    expect_backbone: Mapping[str, Any] | None = None,
) -> PromptStore:
    """Load a complete prompt store, checking schema, completeness and provenance."""
    with _open_checked(path, expect_method, expect_backbone) as (h5, attrs):
        data = {f.name: f.load(h5[f.name][...]) for f in FIELDS if f.name in h5}
    return PromptStore(**data, attrs=attrs)


def read_store_rows(
    path: str | os.PathLike,
    name: str,
    select: Callable[[int], np.ndarray],
    *,
    expect_method: str | None = None,
    expect_backbone: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """Rows ``select(N)`` (sorted indices) of one per-sample numeric dataset, after the same
    checks as :func:`read_store`: only those rows are read (h5py slices), never the whole store.
    """
    field = _FIELD.get(name)
    if field is None or not field.per_row or field.dtype is STRING:
        raise ValueError(f"{name!r} is not a per-sample numeric dataset of the prompt store")
    with _open_checked(path, expect_method, expect_backbone) as (h5, _):
        rows = np.asarray(select(len(h5[name])), dtype=np.int64)
        return field.load(h5[name][rows])
