"""Rules of the house (docs/architecture.md) that code review alone would let slip."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

FORBIDDEN_IN_CORE = {
    "grpc",
    "duckdb",
    "streamlit",
    "pyarrow",
    "starlette",
    "uvicorn",
    "collector",
    "analytics",
    "app",
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "processors").rglob("*.py")), ids=lambda p: p.name)
def test_processors_stay_pure(path: Path) -> None:
    assert imports_of(path) & FORBIDDEN_IN_CORE == set()


@pytest.mark.parametrize("path", sorted((ROOT / "app").rglob("*.py")), ids=lambda p: p.name)
def test_app_never_imports_the_collector(path: Path) -> None:
    assert "collector" not in imports_of(path)


#: a decoder process leaves when its server is gone (killed outright): it never exits the server
CHILD_PROCESS_EXITS = {"collector/decoders.py": "os._exit("}


#: the packages coordstate ships (pyproject's package list); nothing else in the checkout, so a
#: virtualenv under any name (e.g. `make test-duckdb2`'s) is never scanned
PACKAGES = ("collector", "processors", "analytics", "app", "demo")


def test_only_the_cli_exits_the_process() -> None:
    offenders = []
    scanned = [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]
    assert ROOT / "collector" / "decoders.py" in scanned
    for path in scanned:
        if path.name == "cli.py":
            continue
        text = path.read_text()
        allowed = CHILD_PROCESS_EXITS.get(str(path.relative_to(ROOT)))
        if allowed:
            text = text.replace(allowed, "", 1)
        if "sys.exit(" in text or "os._exit(" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
