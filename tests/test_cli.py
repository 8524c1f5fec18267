"""The command line: help, version, thermo tables, experiments and the report."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from spinformer import __version__
from spinformer.cli import app

runner = CliRunner()


def test_help_and_version():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("thermo", "report", "run", "experiments"):
        assert command in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_thermo_square_lattice_table():
    result = runner.invoke(app, ["thermo", "square-lattice", "--size", "4", "--beta", "0.4"])
    assert result.exit_code == 0, result.output
    assert "log_partition" in result.output
    assert "14.561093023" in result.output  # published 4x4 torus value at beta = 0.4


def test_thermo_other_models_and_options():
    for args in (
        ["chain", "--size", "12", "--beta", "1", "--field", "0.3"],
        ["curie-weiss", "--size", "10", "--beta", "1"],
        ["sk", "--size", "8", "--seed", "3"],
        ["square-lattice", "--size", "3", "-o", "route='enumerate'"],
    ):
        result = runner.invoke(app, ["thermo", *args])
        assert result.exit_code == 0, result.output
    assert (
        "15.852987162"
        in runner.invoke(
            app, ["thermo", "chain", "--size", "12", "--beta", "1", "--field", "0.3"]
        ).output
    )


def test_thermo_bad_input_is_a_clear_error():
    result = runner.invoke(app, ["thermo", "square-lattice", "--beta", "-1"])
    assert result.exit_code == 2 and "beta must be positive" in result.output
    result = runner.invoke(app, ["thermo", "curie-weiss", "--size", "30"])
    assert result.exit_code == 2 and "exact enumeration needs N <= 24" in result.output
    result = runner.invoke(app, ["thermo", "chain", "--method", "nope"])
    assert result.exit_code == 2 and "--method must be one of" in result.output
    result = runner.invoke(app, ["thermo", "square-lattice", "--size", "0"])
    assert result.exit_code == 2


def test_run_experiment_and_write_results(tmp_path):
    result = runner.invoke(app, ["run", "ising_exact_checks", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["metrics"]["max_abs_error"] < 1e-9
    bad = runner.invoke(app, ["run", "ising_exact_checks", "--set", "nonsense=1"])
    assert bad.exit_code == 2 and "unknown config keys" in bad.output
    assert runner.invoke(app, ["run", "no_such_experiment"]).exit_code == 2


def test_experiments_list():
    result = runner.invoke(app, ["experiments"])
    assert result.exit_code == 0 and "ising_lattice_sweep" in result.output


def test_report_writes_self_contained_html(tmp_path):
    out = tmp_path / "rep"
    result = runner.invoke(app, ["report", "--out", str(out), "--only", "ising_exact_checks"])
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text()
    assert page.startswith("<!doctype html>") and "Exact Ising values" in page
    assert (
        "<script src" not in page
        and "http" not in page.split("<body>")[1].split("spinformer report")[0]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ising_exact_checks"]["max_abs_error"] < 1e-9
    # a second build replaces the first atomically and leaves no staging directories behind
    assert (
        runner.invoke(app, ["report", "--out", str(out), "--only", "ising_exact_checks"]).exit_code
        == 0
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_report_rejects_unknown_sections(tmp_path):
    result = runner.invoke(app, ["report", "--out", str(tmp_path / "r"), "--only", "nope"])
    assert result.exit_code == 2 and "unknown" in result.output
    assert not (tmp_path / "r").exists()


def test_run_with_toml_preset(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text("sizes = [3, 4]\nnum_betas = 5\n")
    result = runner.invoke(
        app,
        [
            "run",
            "ising_lattice_sweep",
            "--config",
            str(preset),
            "--set",
            "beta_max=0.5",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "o" / "results.json").read_text())
    assert payload["config"] == {"sizes": [3, 4], "beta_min": 0.05, "beta_max": 0.5, "num_betas": 5}
    assert (tmp_path / "o" / "thermodynamics_vs_beta.png").stat().st_size > 1000
    missing = runner.invoke(
        app, ["run", "ising_lattice_sweep", "--config", str(tmp_path / "none.toml")]
    )
    assert missing.exit_code == 2 and "--config must be an existing TOML file" in missing.output
