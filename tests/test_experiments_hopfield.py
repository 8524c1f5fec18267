"""Hopfield experiments and the ``spinformer hopfield`` commands, at small sizes."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from spinformer.cli import app
from spinformer.experiments import get_experiment, run_experiment

pytestmark = pytest.mark.usefixtures("one_thread")


def test_hopfield_experiments_run_small() -> None:
    cap = run_experiment("hopfield_capacity", num_spins=200, loads=(0.05, 0.3), starts=5)
    assert cap.metrics["overlap_alpha_0.05"] > 0.95 > cap.metrics["overlap_alpha_0.3"]
    modern = run_experiment(
        "modern_hopfield_capacity", counts=(2, 64), betas=(0.5, 64.0), dims=(4, 8), queries=8
    )
    assert modern.metrics["capacity_D8"] >= modern.metrics["capacity_D4"]
    landscape = run_experiment("hopfield_landscapes", grid=21, num_spins=100)
    assert set(landscape.metrics["retrieved_kinds"].split(",")) <= {
        "single",
        "metastable",
        "global",
    }
    paths = landscape.tables["classical paths"]
    assert all(row["barrier E/N"] > 0 for row in paths)
    for name in ("hopfield_capacity", "modern_hopfield_capacity", "hopfield_landscapes"):
        assert get_experiment(name).section == "Hopfield memories"


def test_hopfield_retrieve_command() -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["hopfield", "retrieve", "--spins", "100", "--patterns", "5"])
    assert out.exit_code == 0, out.output
    assert "mean final overlap" in out.output
    bad = runner.invoke(app, ["hopfield", "retrieve", "--temperature", "-1"])
    assert bad.exit_code == 2 and "temperature" in bad.output
