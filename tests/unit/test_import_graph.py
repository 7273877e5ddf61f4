"""The package's import graph: no runtime cycle, and a light ``import pgfailover``.

Imports under ``if TYPE_CHECKING:`` are left out of the graph (they never
run); the modules that still need one to name the manager are listed, so
that a new one is a decision, not an accident.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "pgfailover"

# Modules that name FailoverManager for the type checker only: the outer
# layers that serve a manager's public API (the manager imports neither).
TYPE_ONLY_MANAGER = {
    "pgfailover.metrics",
    "pgfailover.server",
}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path) -> tuple[set[str], set[str]]:
    """Modules imported when ``path`` runs, and those imported for type checking only."""
    tree = ast.parse(path.read_text())
    typing_only: set[str] = set()
    runtime: set[str] = set()

    def names(node: ast.AST) -> set[str]:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            return {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        if isinstance(node, ast.Import):
            return {a.name for a in node.names}
        return set()

    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                typing_only |= names(inner)
    for node in ast.walk(tree):
        runtime |= names(node)
    return runtime - typing_only, typing_only


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    typing: dict[str, set[str]] = {}
    for name, path in modules.items():
        runtime, typing_only = _runtime_imports(path)
        graph[name] = {m for m in runtime if m in modules and m != name}
        typing[name] = {m for m in typing_only if m in modules}
    return graph, typing


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_has_no_runtime_import_cycle() -> None:
    graph, _ = _graph()
    # A package's __init__ re-exports its modules; edges into it are not cycles.
    edges = {
        m: {d for d in deps if not PACKAGE.joinpath(*d.split(".")[1:], "__init__.py").exists()}
        for m, deps in graph.items()
    }
    assert _cycle(edges) is None, " -> ".join(_cycle(edges) or [])


def test_only_the_listed_modules_need_the_manager_for_type_checking() -> None:
    _, typing = _graph()
    users = {m for m, deps in typing.items() if "pgfailover.manager" in deps}
    assert users <= TYPE_ONLY_MANAGER, sorted(users - TYPE_ONLY_MANAGER)


def test_importing_pgfailover_loads_no_lab_cli_or_web_server() -> None:
    code = (
        "import sys, pgfailover; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith(('pgfailover.lab', "
        "'pgfailover.cli', 'pgfailover.server', 'pgfailover.metrics', 'pgfailover.demo', "
        "'pgfailover.listener', 'click', 'prometheus_client', 'waitress')))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("missing", ["click", "prometheus_client", "waitress"])
def test_the_command_line_without_its_extra_says_so_in_one_line(missing: str) -> None:
    code = (
        f"import sys; sys.modules[{missing!r}] = None; sys.argv = ['pgfailover', 'status']; "
        "from pgfailover.cli import main; main()"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 3
    assert out.stderr.strip().splitlines() == [
        f"pgfailover: the command line needs {missing}: pip install 'pgfailover[cli]'"
    ]


def test_the_django_status_command_needs_no_command_line_extra() -> None:
    path = PACKAGE / "contrib" / "django" / "management" / "commands" / "pgfailover_status.py"
    runtime, _ = _runtime_imports(path)
    assert not {m for m in runtime if m.startswith(("click", "pgfailover.cli"))}
