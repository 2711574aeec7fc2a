"""Figures of the reliability runs, collected for the README's Reliability table.

Tests call :func:`record`; with ``COORDSTATE_RELIABILITY_REPORT=FILE`` (``make soak`` sets it)
each figure is appended to FILE as a JSON line, and ``bench/reliability_table.py`` prints the table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SOAK = os.environ.get("COORDSTATE_SOAK") == "1"


def record(check: str, **figures: object) -> None:
    target = os.environ.get("COORDSTATE_RELIABILITY_REPORT")
    if target:
        with Path(target).open("a", encoding="utf-8") as f:
            f.write(json.dumps({"check": check, **figures}, default=str) + "\n")
