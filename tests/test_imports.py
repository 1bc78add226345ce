"""The pdiff package has no import cycle: a new reader of any module can follow its imports down.

Only module-level imports count; an import inside a function is a deliberate lazy import (heavy
dependencies, optional tools) and runs after every module has loaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import pdiff

ROOT = Path(pdiff.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The pdiff modules ``path`` imports at module level (``if TYPE_CHECKING:`` included: a
    cycle there is still a cycle for a reader)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes: list[ast.stmt] = list(tree.body)
    found: set[str] = set()
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.If | ast.Try):
            nodes += [*node.body, *node.orelse]
            nodes += [s for h in getattr(node, "handlers", []) for s in h.body]
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from pkg import sub` imports the submodule pkg.sub; `from mod import name`, mod.
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                      for a in node.names}
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
    return {name: module_level_imports(path, name, set(paths)) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a closed path ``[a, b, ..., a]``, or None."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, todo = [start], [iter(sorted(graph[start]))]
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:
                done.add(path.pop())
                todo.pop()
            elif nxt in path:
                return [*path[path.index(nxt):], nxt]
            elif nxt not in done:
                path.append(nxt)
                todo.append(iter(sorted(graph[nxt])))
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_graph_sees_the_package():
    graph = import_graph()
    assert "pdiff.data" in graph and "pdiff.store" in graph["pdiff.overfit"]


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def python(code: str) -> str:
    """Run `code` in a fresh interpreter (nothing imported yet) and return its stdout."""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT.parent, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.mark.parametrize("module", ["pdiff.plan.study", "pdiff.cli", "pdiff.check_data",
                                    "pdiff.data", "pdiff.report"])
def test_planning_the_cli_and_the_split_reading_stages_are_torch_free(module):
    """The workflow and the report import pdiff.plan before any job runs: it must not load
    torch (seconds per Snakemake start, and a login node may not have it). `pdiff --help`,
    check-data, fewshot and report read JSON, splits and tables only: without torch they start
    in a tenth of a second instead of one and a half (8 jobs of the quick demo)."""
    python(f"import sys, {module}; assert 'torch' not in sys.modules, sorted(sys.modules)")


def test_torch_free_stages_run_without_torch(tmp_path):
    """Run as the rules run them (with --threads), the stages marked TORCH_FREE do not load
    torch: check-data on a missing folder fails after the thread setup and the check."""
    out = python("import sys; from pdiff.cli import STAGES, main; "
                 f"rc = main(['check-data', '--data-root', {str(tmp_path)!r}, '--datasets', "
                 "'[\"OxfordPets\"]', '--threads', '1']); "
                 "assert rc != 0; assert 'torch' not in sys.modules, 'torch imported'; "
                 "print(sorted(s.NAME for s in STAGES if getattr(s, 'TORCH_FREE', False)))")
    assert out.strip().splitlines()[-1] == "['check-data', 'fewshot', 'report']"
