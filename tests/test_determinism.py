"""Two runs of the smoke config on the same machine give identical results: every metrics JSON
(wall-clock fields aside), the report tables, byte-identical prompt, DiT and backbone
checkpoints, and equal prompt stores.

The first run is the session's `smoke` fixture (conftest.py); this module makes one more, in
another temporary working directory. One fast test (no Snakemake) checks the cause of the only
difference there was: safetensors writes its metadata in a per-process hash order.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pdiff.store import read_store
from tests.helpers import run_smoke

workflow = pytest.mark.workflow

#: The only fields allowed to differ between two runs: wall-clock measurements (evaluation
#: bundles and the report's cost summary: `seconds`, `images_per_second`; pretraining metrics:
#: `seconds`).
TIMING_KEYS = frozenset({"seconds", "images_per_second"})


@pytest.fixture(scope="module")
def second(tmp_path_factory) -> Path:
    return run_smoke(tmp_path_factory.mktemp("smoke_again"))


def _files(root: Path, pattern: str) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob(pattern))


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


@workflow
def test_every_metrics_json_is_identical(smoke, second):
    files = _files(smoke, "*.json")
    assert files == _files(second, "*.json")
    kinds = {f.parts[0] for f in files}
    assert {"runs", "zeroshot", "backbone", "fewshot", "report", "data"} <= kinds, kinds
    for rel in files:
        a, b = (json.loads((root / rel).read_text()) for root in (smoke, second))
        assert _without_timings(a) == _without_timings(b), rel


@workflow
def test_report_tables_are_identical(smoke, second):
    tables = _files(smoke / "report", "*.csv") + _files(smoke / "report", "*.md")
    assert len(tables) == 8  # 3 protocols + diagnosis, CSV and Markdown each
    for rel in tables:
        assert (smoke / "report" / rel).read_text() == (second / "report" / rel).read_text(), rel


@workflow
def test_checkpoints_are_byte_identical(smoke, second):
    files = _files(smoke, "*.safetensors")
    assert files == _files(second, "*.safetensors")
    assert len(files) == 1 + 6 + 6  # the pretrained backbone, a prompt and a DiT per run
    for rel in files:
        assert (smoke / rel).read_bytes() == (second / rel).read_bytes(), rel


@workflow
def test_prompt_stores_are_identical(smoke, second):
    files = _files(smoke, "store.h5")
    assert files == _files(second, "store.h5") and len(files) == 6
    for rel in files:
        a, b = read_store(smoke / rel), read_store(second / rel)
        for name in ("prompts", "init_prompt", "features", "labels", "loss_before",
                     "loss_after"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=str(rel))
        assert a.sample_ids == b.sample_ids and a.attrs == b.attrs, rel


WRITE = """
import sys, torch
from pdiff.utils import save_safetensors
save_safetensors({"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.float16)},
                 sys.argv[1], {k: str(i) for i, k in enumerate("zyxwvutsrqponm")})
"""


def test_safetensors_files_are_byte_identical_across_processes(tmp_path):
    """Fresh interpreters (other hash seeds): the same tensors and metadata, the same bytes."""
    paths = [tmp_path / f"{i}.safetensors" for i in range(2)]
    for i, path in enumerate(paths):
        subprocess.run([sys.executable, "-c", WRITE, str(path)], check=True,
                       env={"PYTHONHASHSEED": str(i + 1), "PATH": ""})
    assert paths[0].read_bytes() == paths[1].read_bytes()
    from safetensors.torch import load_file, safe_open

    with safe_open(str(paths[0]), framework="pt") as f:
        assert f.metadata() == {k: str(i) for i, k in enumerate("zyxwvutsrqponm")}
    assert load_file(str(paths[0]))["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
