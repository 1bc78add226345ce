"""The test suite's own rules: helpers live in tests/helpers.py (fixtures in conftest.py), no
test module imports another or conftest.py, and the markers that select slow tests exist."""

from __future__ import annotations

import ast

import pytest

from tests.helpers import REPO, marker_needed

TESTS = REPO / "tests"
SHARED = {"tests.helpers"}  # the one module test modules may import from tests/


def imported_test_modules(source: str, name: str) -> set[str]:
    """The modules of the tests package (or conftest) that `source`, module `name`, imports,
    other than the shared helpers."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: inside the tests package
                base = ".".join(["tests", *([base] if base else [])])
            # `from tests import x` imports the module tests.x
            found |= {f"{base}.{a.name}" if base == "tests" else base for a in node.names}
    return {m for m in found
            if (m == "conftest" or m.startswith(("tests.", "conftest.")) or m == "tests")
            and m not in SHARED and m != name}


def test_the_checker_sees_each_way_of_importing_a_test_module():
    for source in ("from tests.test_data import x", "from tests import test_data",
                   "import tests.test_data", "from .test_data import x",
                   "from tests.conftest import x", "import conftest"):
        assert imported_test_modules(source, "tests.test_other"), source
    assert not imported_test_modules("from tests.helpers import x\nimport pytest",
                                     "tests.test_other")


@pytest.mark.parametrize("path", sorted(TESTS.rglob("*.py")), ids=lambda p: p.name)
def test_no_test_module_imports_another_or_conftest(path):
    name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    bad = imported_test_modules(path.read_text(), name)
    if path.name == "conftest.py":
        bad -= {"tests.conftest"}
    assert not bad, f"{path.name} imports {sorted(bad)}: move what it needs to tests/helpers.py"


def test_every_module_in_tests_is_a_test_module_or_the_shared_one():
    others = {p.name for p in TESTS.rglob("*.py")} - {"__init__.py", "conftest.py", "helpers.py"}
    assert all(n.startswith("test_") for n in others), sorted(others)


def test_selection_markers_are_registered_and_strict(pytestconfig):
    registered = {m.split(":")[0] for m in pytestconfig.getini("markers")}
    assert {"workflow", "dryrun", "slurm"} <= registered
    assert "--strict-markers" in pytestconfig.getini("addopts")
    makefile = (REPO / "Makefile").read_text()
    assert '-m "not workflow and not slurm"' in makefile


@pytest.mark.parametrize(
    ("argv", "needed"),
    [
        (["/venv/bin/snakemake", "--cores", "2"], {"workflow", "slurm"}),
        (["snakemake", "-n", "--configfile", "c.yaml"], {"dryrun", "workflow", "slurm"}),
        ("snakemake --lint", {"dryrun", "workflow", "slurm"}),
        (["python", "-m", "snakemake", "--cores", "1"], {"workflow", "slurm"}),
        (["/venv/bin/snakefmt", "--check", "Snakefile"], None),
        (["pdiff", "train"], None),
    ],
)
def test_a_snakemake_command_needs_its_marker(argv, needed):
    assert marker_needed(argv) == needed
