"""Tests of the HDF5 prompt store: round trip, resume, and every user-facing error."""

from __future__ import annotations

import errno
from dataclasses import fields
from pathlib import Path

import h5py
import numpy as np
import pytest

from pdiff.errors import PdiffError
from pdiff.store import (
    FIELDS,
    SCHEMA_VERSION,
    PromptStore,
    open_writer,
    partial_path,
    read_store,
)

N, T, D, F = 10, 3, 4, 5
BACKBONE = {"model": "pdiff-tiny", "pretrained": "shipped", "sha256": "ab" * 32}


def _attrs(**over: object) -> dict:
    attrs = {
        "method": "coop",
        "dataset": "shapes",
        "seed": 1,
        "overfit": {"steps": 5, "lr": 0.01, "batch_size": 64},
        "backbone": BACKBONE,
        "prompt_spec": {"tensors": [{"name": "ctx", "shape": [T, D]}]},
        "note": "extra scalar",
        "flag": True,
    }
    attrs.update(over)
    return attrs


def _rows(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((T, D), dtype=bool)
    mask[-1, 2:] = False
    prompts = rng.normal(size=(N, T, D)).astype(np.float32) * mask
    return {
        "prompts": prompts,
        "features": rng.normal(size=(N, F)).astype(np.float32),
        "loss_before": rng.uniform(1, 2, size=N).astype(np.float32),
        "loss_after": rng.uniform(0, 1, size=N).astype(np.float32),
        "mask": mask,
        "init": rng.normal(size=(T, D)).astype(np.float32) * mask,
    }


def _writer(path: Path, rows: dict, **attr_over: object):
    return open_writer(
        path,
        sample_ids=[f"class_{i % 3}/img_{i:03d}.png" for i in range(N)],
        labels=np.arange(N) % 3,
        init_prompt=rows["init"],
        token_shape=(T, D),
        feature_dim=F,
        attrs=_attrs(**attr_over),
        token_mask=rows["mask"],
    )


def _write(writer, rows: dict, idx: np.ndarray) -> None:
    writer.write(
        idx, rows["prompts"][idx], rows["features"][idx],
        rows["loss_before"][idx], rows["loss_after"][idx],
    )


def test_round_trip(tmp_path: Path) -> None:
    rows = _rows()
    path = tmp_path / "store.h5"
    with _writer(path, rows) as w:
        assert w.pending().tolist() == list(range(N))
        _write(w, rows, np.array([7, 2, 5]))  # unsorted indices are fine
        _write(w, rows, np.array([0, 1, 3, 4, 6, 8, 9]))
        assert w.pending().size == 0
        assert not path.exists(), "no final file before finalize"
        w.finalize()
    assert path.exists() and not partial_path(path).exists()

    s = read_store(path, expect_method="coop", expect_backbone=BACKBONE)
    np.testing.assert_array_equal(s.prompts, rows["prompts"])
    np.testing.assert_array_equal(s.features, rows["features"])
    np.testing.assert_array_equal(s.loss_before, rows["loss_before"])
    np.testing.assert_array_equal(s.loss_after, rows["loss_after"])
    np.testing.assert_array_equal(s.init_prompt, rows["init"])
    np.testing.assert_array_equal(s.token_mask, rows["mask"])
    np.testing.assert_array_equal(s.labels, np.arange(N) % 3)
    assert s.labels.dtype == np.int64 and s.prompts.dtype == np.float32
    assert s.sample_ids == [f"class_{i % 3}/img_{i:03d}.png" for i in range(N)]
    assert s.done.all()
    for key, value in _attrs().items():
        assert s.attrs[key] == value, key
    assert s.attrs["schema_version"] == SCHEMA_VERSION
    assert isinstance(s.attrs["pdiff_version"], str)
    assert s.token_shape == (T, D) and s.feature_dim == F and s.num_samples == N

    # Plain HDF5 layout: chunked, gzip-compressed, JSON attributes as strings.
    with h5py.File(path, "r") as h5:
        assert h5["prompts"].chunks is not None
        assert h5["prompts"].compression == "gzip"
        assert isinstance(h5.attrs["backbone"], str)


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    rows = _rows()
    first, second = np.arange(0, N, 2), np.arange(1, N, 2)

    resumed = tmp_path / "resumed.h5"
    with _writer(resumed, rows) as w:
        _write(w, rows, first)
    assert partial_path(resumed).exists() and not resumed.exists()
    with _writer(resumed, rows) as w:
        assert w.resumed
        np.testing.assert_array_equal(w.pending(), second)
        _write(w, rows, w.pending())
        w.finalize()

    straight = tmp_path / "straight.h5"
    with _writer(straight, rows) as w:
        _write(w, rows, np.arange(N))
        w.finalize()

    a, b = read_store(resumed), read_store(straight)
    for name in ("prompts", "features", "labels", "loss_before", "loss_after", "init_prompt"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.sample_ids == b.sample_ids and a.attrs == b.attrs


def test_incompatible_partial_rejected(tmp_path: Path) -> None:
    rows = _rows()
    path = tmp_path / "store.h5"
    with _writer(path, rows) as w:
        _write(w, rows, np.arange(3))
    with pytest.raises(PdiffError, match=r"seed.*delete .*\.partial"):
        _writer(path, rows, seed=2)
    other = dict(rows, init=rows["init"] + 1)
    with pytest.raises(PdiffError, match="init_prompt"):
        _writer(path, other)
    # The rejected partial is left alone.
    with _writer(path, rows) as w:
        assert w.pending().size == N - 3


def test_store_class_follows_the_declared_fields() -> None:
    assert [f.name for f in fields(PromptStore)] == [*(f.name for f in FIELDS), "attrs"]


@pytest.mark.parametrize("name", [f.name for f in FIELDS])
def test_partial_lacking_a_dataset_is_refused_on_resume(tmp_path: Path, name: str) -> None:
    rows = _rows()
    path = tmp_path / "store.h5"
    with _writer(path, rows) as w:
        _write(w, rows, np.arange(3))
    with h5py.File(partial_path(path), "r+") as h5:
        del h5[name]
    with pytest.raises(PdiffError, match=rf"different run: dataset '{name}' is missing.*delete"):
        _writer(path, rows)


def test_finalize_requires_all_rows(tmp_path: Path) -> None:
    rows = _rows()
    path = tmp_path / "store.h5"
    with _writer(path, rows) as w:
        _write(w, rows, np.arange(4))
        with pytest.raises(PdiffError, match="pending"):
            w.finalize()
    assert not path.exists()


def test_read_store_errors(tmp_path: Path) -> None:
    rows = _rows()
    missing = tmp_path / "nope.h5"
    with pytest.raises(PdiffError, match=r"nope\.h5.*pdiff overfit"):
        read_store(missing)

    path = tmp_path / "store.h5"
    with _writer(path, rows) as w:
        _write(w, rows, np.arange(N))
        w.finalize()
    with pytest.raises(PdiffError, match="built for method coop, expected cocoop"):
        read_store(path, expect_method="cocoop")
    with pytest.raises(PdiffError, match="sha256"):
        read_store(path, expect_backbone=dict(BACKBONE, sha256="cd" * 32))
    with pytest.raises(PdiffError, match="model"):
        read_store(path, expect_backbone={"model": "ViT-B-16", "pretrained": "shipped"})
    # Keys the caller leaves out (or sets to None) are not compared.
    read_store(path, expect_backbone={"model": "pdiff-tiny", "sha256": None})

    # An incomplete store under the final name (e.g. a copied .partial).
    incomplete = tmp_path / "incomplete.h5"
    with _writer(incomplete, rows) as w:
        _write(w, rows, np.arange(5))
    partial_path(incomplete).rename(incomplete)
    with pytest.raises(PdiffError, match=r"incomplete \(5/10"):
        read_store(incomplete)

    with h5py.File(path, "r+") as h5:
        h5.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(PdiffError, match="schema_version"):
        read_store(path)


def test_disk_full_keeps_partial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _rows()
    path = tmp_path / "store.h5"
    with _writer(path, rows) as w:
        _write(w, rows, np.arange(4))

    def full(self: h5py.Dataset, key: object, value: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(h5py.Dataset, "__setitem__", full)
        with pytest.raises(PdiffError, match=r"disk full.*partial store is kept"):
            with _writer(path, rows) as w:
                _write(w, rows, np.arange(4, N))
    assert partial_path(path).exists() and not path.exists()
    with _writer(path, rows) as w:
        np.testing.assert_array_equal(w.pending(), np.arange(4, N))
        _write(w, rows, w.pending())
        w.finalize()
    np.testing.assert_array_equal(read_store(path).prompts, rows["prompts"])


def test_missing_attrs_rejected(tmp_path: Path) -> None:
    rows = _rows()
    attrs = _attrs()
    del attrs["backbone"]
    with pytest.raises(PdiffError, match="backbone"):
        open_writer(
            tmp_path / "s.h5", sample_ids=["a"], labels=[0], init_prompt=rows["init"],
            token_shape=(T, D), feature_dim=F, attrs=attrs,
        )
