"""Monte Carlo experiments and the ``spinformer mc`` commands, at small sizes."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from spinformer.cli import app
from spinformer.experiments import get_experiment, run_experiment
from spinformer.physics import curie_weiss, curie_weiss_binomial, thermodynamics

pytestmark = pytest.mark.usefixtures("one_thread")


def test_ergodicity_mixture_rebuilds_the_ensemble_below_tc() -> None:
    result = run_experiment("ergodicity", size=10, sweeps=600, chains=4)
    m = result.metrics
    assert m["escape_fraction_plus"] == 0.0 and m["escape_fraction_minus"] == 0.0
    assert m["basin_plus_m"] > 0.9 and m["basin_minus_m"] < -0.9  # time averages depend on start
    assert abs(m["mixture_m"] - m["exact_m"]) < 4 * m["mixture_m_err"]
    assert abs(m["basin_plus_m"] - m["exact_m"]) > 0.3  # neither basin alone is the ensemble
    assert abs(m["above_tc_energy_z"]) < 3
    assert m["hopfield_ensemble_overlap"] < 0.05
    assert "basins" in result.figures
    # Curie–Weiss below T_c: the same decomposition against the binomial sum
    assert m["cw_escape_fraction"] == 0.0
    assert m["cw_basin_plus_m"] > 0.95 and m["cw_basin_minus_m"] < -0.95
    assert abs(m["cw_mixture_m"] - m["cw_exact_m"]) < 4 * m["cw_mixture_m_err"]
    assert abs(m["cw_exact_m"]) < 0.5  # neither basin alone is the ensemble


def test_curie_weiss_binomial_sum_matches_enumeration() -> None:
    model = curie_weiss(10, beta=1.7, field=0.05)
    exact = thermodynamics(model)
    log_z, m, e = curie_weiss_binomial(10, 1.7, 0.05)
    assert log_z == pytest.approx(float(exact.log_partition), abs=1e-12)
    assert m == pytest.approx(float(exact.magnetization.mean()), abs=1e-12)
    assert e == pytest.approx(float(exact.energy) / 10, abs=1e-12)


def test_experiments_are_registered_in_the_report_section() -> None:
    for name in ("mc_published_values", "mc_critical_slowing_down", "ergodicity"):
        assert get_experiment(name).section == "Monte Carlo and ergodicity"


def test_mc_sample_command_prints_estimates() -> None:
    runner = CliRunner()
    out = runner.invoke(
        app, ["mc", "sample", "square-lattice", "--size", "4", "--sweeps", "50", "--chains", "2"]
    )
    assert out.exit_code == 0, out.output
    assert "<m^2>" in out.output
    args = ["mc", "sample", "square-lattice", "--size", "8", "--sweeps", "50", "--chains", "64"]
    out = runner.invoke(app, [*args, "--engine", "multispin"])
    assert out.exit_code == 0, out.output
    assert "<m^2>" in out.output


def test_mc_sample_command_rejects_bad_input() -> None:
    runner = CliRunner()
    out = runner.invoke(app, ["mc", "sample", "chain", "--sweeps", "0"])
    assert out.exit_code == 2
    assert "sweeps" in out.output
    out = runner.invoke(app, ["mc", "sample", "chain", "--engine", "multispin"])
    assert out.exit_code == 2
    assert "needs a periodic lattice" in out.output
