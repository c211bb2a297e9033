"""docs/architecture.md's "Where things live" is true: it lists every package under
src/mqpy, and no package imports one it may not (so the arrows point one way)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "mqpy"
ROW = re.compile(r"^\| `(\w+)/` \| .* \| (.*) \|$")


def documented() -> dict[str, set[str] | None]:
    """Each package in the table, with the packages it may import (None: everything
    listed below it, resolved by the caller)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, set[str] | None] = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match is None:
            continue
        name, allowed = match.groups()
        if allowed == "everything below":
            rows[name] = None
        else:
            rows[name] = set(re.findall(r"`(\w+)`", allowed))
    return rows


def packages() -> set[str]:
    return {p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")}


def imported(package: str) -> set[str]:
    """The top-level parts of mqpy that the package's modules import."""
    found: set[str] = set()
    for path in (PACKAGE / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                parts = name.split(".")
                if parts[0] == "mqpy" and len(parts) > 1 and parts[1] != package:
                    found.add(parts[1])
    return found


def test_every_package_is_listed() -> None:
    assert set(documented()) == packages()


def test_no_package_imports_one_it_may_not() -> None:
    rows = documented()
    order = list(rows)
    wrong = {}
    for index, (package, allowed) in enumerate(rows.items()):
        may = set(order[index + 1 :]) | {"config"} if allowed is None else allowed
        if package == "static":
            continue
        extra = imported(package) - may
        if extra:
            wrong[package] = sorted(extra)
    assert wrong == {}
