"""The attention experiments and the ``spinformer attention`` commands."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from spinformer.cli import app
from spinformer.experiments import get_experiment, list_experiments, run_experiment

SECTION = "Attention as a spin system"


def test_experiments_are_registered_in_the_report_section():
    names = {e.name for e in list_experiments() if e.section == SECTION}
    assert names == {
        "attention_seed_table",
        "attention_extensivity",
        "attention_beta_sweep",
        "attention_bifurcation",
        "attention_mean_field_bridges",
    }
    assert "pretrained" in get_experiment("attention_beta_sweep").description


def test_seed_table_routes_agree():
    result = run_experiment("attention_seed_table", num_tokens=4, dim=6, seed=3)
    assert result.metrics["max_abs_difference"] < 1e-12
    assert {r["quantity"] for r in result.tables["transformer table"]} >= {"score ω", "output z"}


def test_extensivity_holds():
    result = run_experiment("attention_extensivity", betas=(0.01, 1.0, 100.0))
    assert result.metrics["max_abs_difference"] < 1e-10


def test_bridges_match_closed_forms():
    result = run_experiment("attention_mean_field_bridges")
    assert result.metrics["max_abs_error"] < 1e-9
    assert result.metrics["pitchfork_s"] == pytest.approx(0.9575040241, abs=1e-9)
    assert result.metrics["curie_weiss_m"] == pytest.approx(0.858559636640, abs=1e-11)


def test_beta_sweep_on_text():
    result = run_experiment(
        "attention_beta_sweep", num_tokens=16, embed_dim=16, num_heads=2, num_betas=9, causal=True
    )
    assert result.metrics["module_vs_ensemble_max_diff"] < 1e-10
    for row in result.tables["per head"]:
        assert 0 < row["S / ln N at β_layer"] <= 1
        assert row["C peak"] > 0
    assert "entropy_heat_capacity_vs_beta" in result.figures


def test_bifurcation_marks_the_critical_beta():
    result = run_experiment("attention_bifurcation", num_betas=6, num_random=4)
    assert result.metrics["pitchfork_beta_c_continuation"] == pytest.approx(0.5, abs=1e-9)
    assert result.metrics["patterns_beta_c_continuation"] == pytest.approx(
        result.metrics["patterns_beta_c_closed_form"], abs=1e-8
    )
    assert result.metrics["patterns_stable_at_max_beta"] > 1
    assert not math.isnan(result.metrics["patterns_beta_c_closed_form"])


def test_cli_commands(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["attention", "bridges"])
    assert result.exit_code == 0, result.output
    assert "0.9575040241" in result.output
    result = runner.invoke(
        app, ["attention", "extensivity", "--set", "betas=(2.0,)", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "results.json").exists()
    result = runner.invoke(app, ["attention", "table", "--set", "nonsense=1"])
    assert result.exit_code == 2
    assert "unknown config keys" in result.output
