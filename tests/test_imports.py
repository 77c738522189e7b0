"""The package's import structure: no cycles, and no torch where only a config is read."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "alphasweep"
ROOT = PACKAGE.parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Each alphasweep module -> the alphasweep modules it imports, anywhere in its body (a lazy import
    inside a function closes a cycle just as well)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import sub` imports the module pkg.sub when there is one, else names of pkg
                targets.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                               for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_import_cycle_inside_the_package():
    graph = _import_graph()
    assert {"alphasweep.orchestrator.sweep", "alphasweep.orchestrator.results"} <= graph.keys()
    assert "alphasweep.orchestrator.results" in graph["alphasweep.orchestrator.report"]  # the walk sees imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def _fresh_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_reading_a_config_and_the_help_import_no_torch():
    """`alphasweep --help`, loading and checking a config (what `validate` builds on) and the objective
    registry stay torch-free; the loss names still import from `alphasweep.objectives`."""
    proc = _fresh_python(
        "import sys\n"
        "from alphasweep.cli import main\n"
        "from alphasweep.config import load_config\n"
        "from alphasweep.validate import validate\n"
        "from alphasweep.objectives import parse_objective\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "validate(load_config('configs/continuum.yaml'))\n"
        "assert parse_objective('GeneralFamily-4').effective_alpha == 4\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "from alphasweep.objectives import objective_loss\n"
        "assert 'torch' in sys.modules and objective_loss.__module__ == 'alphasweep.objectives.loss'\n"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Usage:" in proc.stdout
