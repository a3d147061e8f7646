"""Imports point down: collector/ (receivers, processing, CLI) → storage/; dashboards/ stands alone.

storage/ holds what both sides need (records, storage errors) and never imports the collector, so the storage
engine can be read, tested and replaced on its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# package → the top-level packages of this project it may import
ALLOWED = {
    "storage": {"storage"},
    "dashboards": {"dashboards"},
    "collector": {"collector", "storage"},
}
# the command line sits on top of everything (it also generates the dashboards)
TOP = {"collector/cli.py": {"collector", "storage", "dashboards"}}


def _project_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & {"collector", "storage", "dashboards", "bench", "tests"}


def test_imports_point_down() -> None:
    wrong = []
    for package, allowed in ALLOWED.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            may = TOP.get(str(path.relative_to(ROOT)), allowed)
            for imported in sorted(_project_imports(path) - may):
                wrong.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_imports() -> None:
    assert _project_imports(ROOT / "collector" / "server.py") >= {"collector", "storage"}
