"""Shared fixtures (a tiny randomly initialised CLIP checkpoint, a tiny synthetic world, the
smoke run) and the check that every test running Snakemake carries its marker.

Helpers live in tests/helpers.py; no test module imports this file.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import subprocess  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from pdiff.backbone import load_backbone  # noqa: E402
from pdiff.data.synthetic import write_world  # noqa: E402
from tests.helpers import TINY_WORLD, marker_needed, run_smoke, write_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="session")
def backbone_spec(tiny_checkpoint) -> dict:
    return {"model": "pdiff-tiny", "pretrained": tiny_checkpoint}


@pytest.fixture(scope="session")
def backbone(backbone_spec):
    return load_backbone(backbone_spec)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> str:
    """A tiny world in the CoOp layout: 8 classes per dataset."""
    root = tmp_path_factory.mktemp("world")
    write_world(root, TINY_WORLD)
    return str(root)


@pytest.fixture(scope="session")
def smoke(tmp_path_factory) -> Path:
    """The smoke DAG run once per session."""
    return run_smoke(tmp_path_factory.mktemp("smoke"))


# ---------------------------------------------------------------------------------------------
# Markers (pyproject.toml): a test that runs Snakemake for real is marked `workflow` (or
# `slurm`), one that only plans (`snakemake -n`, `--lint`) `dryrun`, so that `make test-quick`
# can leave the slow ones out. Checked, not trusted: a Snakemake process started while an
# unmarked test (or a fixture it pulls in) runs fails that test.
# ---------------------------------------------------------------------------------------------

_running: list[pytest.Item] = []  # the test being set up, run or torn down


@pytest.hookimpl(tryfirst=True)  # before fixtures are set up: a session fixture counts too
def pytest_runtest_setup(item: pytest.Item) -> None:
    _running[:] = [item]


def pytest_runtest_logfinish() -> None:
    _running.clear()


_popen_init = subprocess.Popen.__init__


def _checked_popen_init(self, args, *rest, **kwargs) -> None:
    needed = marker_needed(args)
    if needed and _running:
        item = _running[0]
        if not needed & {m.name for m in item.iter_markers()}:
            raise pytest.fail.Exception(
                f"{item.nodeid} runs Snakemake ({' '.join(map(str, args))[:200]}) but has none "
                f"of the markers {sorted(needed)}; add one (see pyproject.toml)")
    _popen_init(self, args, *rest, **kwargs)


def pytest_configure(config: pytest.Config) -> None:
    subprocess.Popen.__init__ = _checked_popen_init


def pytest_unconfigure(config: pytest.Config) -> None:
    subprocess.Popen.__init__ = _popen_init
