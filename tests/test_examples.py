"""Every example program runs (examples are runnable programs on generated data)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))
FAST = [p for p in EXAMPLES if "slow" not in p.read_text(encoding="utf-8").split("\n", 3)[0]]


@pytest.mark.parametrize("path", FAST, ids=[p.name for p in FAST])
def test_example_runs(path, capsys):
    runpy.run_path(str(path), run_name="__main__")
    assert capsys.readouterr().out.strip()
