"""Imports point down: collector/cli (the command line, on top) → collector/ (receivers → processing) → storage/;
dashboards/ stands alone and only the command line imports it. No module takes part in an import cycle.

storage/ holds what both sides need (records, storage errors, the facts contract) and never imports the
collector, so the storage engine can be read, tested and replaced on its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("collector", "storage", "dashboards", "bench")
# package → the top-level packages of this project it may import
ALLOWED = {
    "storage": {"storage"},
    "dashboards": {"dashboards"},
    "collector": {"collector", "storage"},
}
# the command line sits on top of everything (it also generates the dashboards)
TOP = {"collector/cli": {"collector", "storage", "dashboards"}}


def _imports(path: Path) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of a file: at module level, inside functions and under ``if TYPE_CHECKING:``
    (a cycle a type checker sees is still two modules that each need the other)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def _project_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in _imports(path):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & {"collector", "storage", "dashboards", "bench", "tests"}


def _allowed(path: Path, package_allowed: set[str]) -> set[str]:
    relative = path.relative_to(ROOT).as_posix()
    for prefix, allowed in TOP.items():
        if relative == prefix + ".py" or relative.startswith(prefix + "/"):
            return allowed
    return package_allowed


def test_imports_point_down() -> None:
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for imported in sorted(_project_imports(path) - _allowed(path, allowed)):
                wrong.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_imports() -> None:
    assert _project_imports(ROOT / "collector" / "server.py") >= {"collector", "storage"}
    assert "dashboards" in _project_imports(ROOT / "collector" / "cli" / "commands.py")
    assert _allowed(ROOT / "collector" / "cli" / "commands.py", ALLOWED["collector"]) == TOP["collector/cli"]
    assert _allowed(ROOT / "collector" / "server.py", ALLOWED["collector"]) == ALLOWED["collector"]


# Inside collector/, the same direction: receivers (otlp/) → processing (pipeline, mappers, cost, items, batcher).
PROCESSING = ("collector/pipeline.py", "collector/mappers", "collector/cost.py", "collector/items.py",
              "collector/batcher.py")
ABOVE_PROCESSING = ("collector.otlp", "collector.server", "collector.cli")


def test_processing_does_not_import_the_receivers() -> None:
    wrong = []
    for place in PROCESSING:
        target = ROOT / place
        for path in sorted(target.rglob("*.py") if target.is_dir() else [target]):
            for node in _imports(path):
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""])
                wrong += [f"{path.relative_to(ROOT)} imports {name}" for name in names
                          if name.startswith(ABOVE_PROCESSING)]
    assert not wrong, "\n".join(wrong)


# --- import cycles -----------------------------------------------------------------------------------------------

def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports. ``from a.b import c`` points at ``a.b.c`` when that is a
    module, else at ``a.b``; a package's ``__init__`` is not counted as imported by its submodules."""
    modules = _modules()

    def module_of(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in _imports(path):
            if isinstance(node, ast.Import):
                targets.update(module_of(alias.name) for alias in node.names)
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in modules else module_of(base))
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_anywhere() -> None:
    graph = import_graph()
    assert len(graph) > 50 and graph["collector.server"] >= {"collector.batcher", "storage.writer"}
    assert not cycles(graph), "\n".join(" ↔ ".join(c) for c in cycles(graph))


def test_the_cycle_check_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


# Inside dashboards/, one way down: generate → one module per dashboard (its panels and their SQL) and alerts →
# the shared pieces (common: builders and layout, fragments: shared SQL, sql: the query model, options).
DASHBOARD_SHARED = {"dashboards.common", "dashboards.fragments", "dashboards.sql", "dashboards.options"}


def test_dashboards_point_from_generate_to_the_shared_pieces() -> None:
    graph = {name: targets for name, targets in import_graph().items() if name.startswith("dashboards.")}
    boards = {name for name in graph if name not in DASHBOARD_SHARED | {"dashboards.generate"}}
    assert {"dashboards.calls", "dashboards.latency", "dashboards.alerts"} <= boards
    assert boards <= graph["dashboards.generate"], "generate builds every dashboard"
    wrong = [f"{name} imports {target}" for name in sorted(graph) if name != "dashboards.generate"
             for target in sorted(graph[name])
             if target == "dashboards.generate" or (target in boards)]
    wrong += [f"{name} imports {target}" for name in sorted(DASHBOARD_SHARED & graph.keys())
              for target in sorted(graph[name] - DASHBOARD_SHARED)]
    assert not wrong, "\n".join(wrong)
