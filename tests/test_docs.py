"""Docs cannot drift: every command-line option is in the README; the CHANGELOG has a section."""

from __future__ import annotations

import argparse

import pytest

from collector.cli import build_parser
from tests.helpers import ROOT

README = (ROOT / "README.md").read_text()


def options() -> list[tuple[str, str]]:
    """(command, option) of every command, nested ones too (``lake maintain``)."""

    def walk(prefix: str, parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
        out = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, command in action.choices.items():
                    out += walk(f"{prefix} {name}".strip(), command)
            out.extend((prefix, o) for o in action.option_strings if o.startswith("--") and o != "--help")
        return out

    return walk("", build_parser())


@pytest.mark.parametrize(("command", "option"), options())
def test_every_option_is_documented(command: str, option: str) -> None:
    assert f"coordstate {command}" in README
    assert option in README, f"`coordstate {command} {option}` is not in the README"


def test_every_command_is_documented() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {
        "check",
        "serve",
        "query",
        "ui",
        "up",
        "demo",
        "replay",
        "export",
        "fit",
        "discover",
        "lake",
    }
    for name in sub.choices:
        assert f"`coordstate {name}" in README


def test_changelog_follows_keep_a_changelog() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog")
    assert "## [Unreleased]" in text
