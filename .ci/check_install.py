"""Run from outside the source tree with the interpreter of a venv where only the wheel is installed (no extras):
imports every module of the installed packages, and checks that every third-party import is a dependency the
wheel declares (not one that merely happens to be installed by another package).
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as metadata
import importlib.util
import pkgutil
import re
import sys
from pathlib import Path

PACKAGES = ("collector", "storage", "dashboards", "bench")
# Scripts that run on import inside another program (alembic's env.py): their imports are checked, not run.
NOT_IMPORTABLE = {"storage.migrations.env"}


def _declared() -> set[str]:
    names = set()
    for requirement in metadata.requires("callscope") or []:
        if "extra ==" in requirement:
            continue
        names.add(re.split(r"[\s;<>=!~\[]", requirement, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def main() -> int:
    problems: list[str] = []
    files: list[tuple[str, Path]] = []
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)
        assert spec and spec.submodule_search_locations, f"{package} is not installed"
        location = Path(list(spec.submodule_search_locations)[0])
        if "site-packages" not in location.parts:
            problems.append(f"{package} comes from {location}, not from the installed wheel")
        for module in pkgutil.walk_packages([str(location)], prefix=package + "."):
            files.append((module.name, Path(importlib.util.find_spec(module.name).origin)))  # type: ignore[union-attr,arg-type]
    files.extend((package, Path(importlib.util.find_spec(package).origin)) for package in PACKAGES)  # type: ignore[union-attr,arg-type]

    declared = _declared()
    distributions = metadata.packages_distributions()
    seen: set[str] = set()
    for name, path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                tops = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top in sys.stdlib_module_names or top in PACKAGES or top == "__future__" or top in seen:
                    continue
                seen.add(top)
                owners = {d.lower().replace("_", "-") for d in distributions.get(top, [])}
                if not owners:
                    problems.append(f"{name} imports {top!r}, which no installed distribution provides")
                elif top == "google":
                    continue  # a namespace shared by protobuf and googleapis-common-protos: checked below
                elif not owners & declared:
                    problems.append(f"{name} imports {top!r} from {sorted(owners)}, not declared in dependencies")
    for namespace, owner in (("google.protobuf", "protobuf"), ("google.rpc", "googleapis-common-protos")):
        if owner not in declared:
            problems.append(f"{namespace} is imported but {owner} is not declared")

    for name, _ in files:
        if name in NOT_IMPORTABLE:
            continue
        try:
            importlib.import_module(name)
        except Exception as exc:  # report every module that cannot be imported, not only the first
            problems.append(f"import {name}: {type(exc).__name__}: {exc}")
    for problem in problems:
        print(f"check_install: {problem}", file=sys.stderr)
    print(f"check_install: {len(files)} modules, {len(seen)} third-party top-level imports, "
          f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
