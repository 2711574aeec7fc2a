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


OUR_PACKAGES = {"collector", "processors", "analytics", "app", "demo"}


def our_imports(path: Path) -> set[str]:
    """Full module names of our own packages that ``path`` imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] in OUR_PACKAGES)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            package = node.module.split(".")[0]
            # `from analytics.read import queries` imports analytics.read.queries
            is_package = (ROOT / node.module.replace(".", "/")).is_dir()
            found = [f"{node.module}.{a.name}" if is_package else node.module for a in node.names]
            names.update(found if package in OUR_PACKAGES else [])
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "app").rglob("*.py")), ids=lambda p: p.name)
def test_the_app_reads_only_through_the_client_and_its_queries(path: Path) -> None:
    allowed = {
        "analytics.read.client",
        "analytics.read.queries",
        "analytics.read.examples",
    }  # the examples are named queries too
    assert {m for m in our_imports(path) if not m.startswith("app")} <= allowed


@pytest.mark.parametrize("path", sorted((ROOT / "analytics").rglob("*.py")), ids=lambda p: p.name)
def test_analytics_never_imports_the_collector(path: Path) -> None:
    assert not {m for m in our_imports(path) if m.split(".")[0] == "collector"}


def _string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }  # fmt: skip
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


#: the core's enums are the vocabulary; migrations are frozen SQL of their time
VOCABULARY_HOMES = {"processors/types.py", "processors/rules.py", "analytics/write/schema.py"}


def test_statuses_and_anomaly_kinds_are_never_retyped_as_strings() -> None:
    from processors.rules import Severity
    from processors.types import AnomalyKind, DropReason, InstanceStatus, RejectReason

    words = {s.value for s in InstanceStatus} | {k.value for k in AnomalyKind} | {s.value for s in Severity}
    words |= {r.value for r in RejectReason} | {r.value for r in DropReason}
    words -= {"failed", "running", "warning"}  # also step states, ordinary words, a log level
    copies = []
    for package in ("collector", "processors", "analytics", "app"):  # demo/: its scenario names are its own
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            if rel in VOCABULARY_HOMES:
                continue
            copies += [f"{rel}:{line}: {value!r}" for line, value in _string_constants(path) if value in words]
    assert copies == []


def test_readers_do_not_pull_in_the_server() -> None:
    """The client and the CLI's renderer read results; they never import the query API (and with
    it the server framework) for a constant or a helper."""
    for rel in ("analytics/read/client.py", "collector/render.py", "analytics/read/formats.py"):
        path = ROOT / rel
        assert "analytics.read.api" not in our_imports(path), rel
        assert not imports_of(path) & {"starlette", "uvicorn"}, rel
