"""The three sweep-point experiments against closed forms, limits and the AGS capacity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from spinformer.experiments import run_experiment
from spinformer.experiments.sweeps import centred_tokens_and_coupling, log_log_slope, phase_figure


def test_phase_point_critical_line_is_the_closed_form_and_scales_as_one_over_g() -> None:
    x, w = centred_tokens_and_coupling(16, 4, 1.0, seed=3)
    xs = x.numpy()
    covariance = xs.T @ xs / xs.shape[0]
    expected = 1.0 / np.abs(np.linalg.eigvals(covariance @ w.numpy())).max()
    one = run_experiment("attention_phase_point", beta=0.1, seed=3).metrics
    two = run_experiment("attention_phase_point", beta=0.1, coupling_scale=2.0, seed=3).metrics
    assert one["beta_c"] == pytest.approx(expected, rel=1e-10)
    assert two["beta_c"] == pytest.approx(expected / 2, rel=1e-10)


def test_phase_point_below_critical_line_has_one_attractor_holding_every_query() -> None:
    beta_c = run_experiment("attention_phase_point", beta=0.1, seed=1).metrics["beta_c"]
    below = run_experiment("attention_phase_point", beta=0.5 * beta_c, seed=1).metrics
    assert below["num_stable"] == 1 and below["largest_basin"] == 1.0
    above = run_experiment("attention_phase_point", beta=1.5 * beta_c, seed=1).metrics
    assert above["num_fixed_points"] >= 2  # m = 0 persists (now unstable) next to new solutions


def test_vector_mean_field_is_exact_at_weak_coupling_within_monte_carlo_error() -> None:
    weak = run_experiment(
        "vector_mean_field_error", spin_dim=3, num_spins=4, beta=0.05, sweeps=300, chains=8
    ).metrics
    # at β -> 0 every method gives m = β h R²/D + O(β²): both errors are Monte Carlo noise
    assert weak["mean_field_error"] < 5 * weak["mc_stderr"]
    assert weak["tap_error"] < 5 * weak["mc_stderr"]


def test_hopfield_retrieval_point_on_either_side_of_the_ags_capacity() -> None:
    below = run_experiment("hopfield_retrieval_point", num_spins=400, load=0.05, starts=5)
    above = run_experiment("hopfield_retrieval_point", num_spins=400, load=0.25, starts=5)
    assert below.metrics["overlap"] > 0.99  # α = 0.05 < α_c ≈ 0.138: the pattern is a fixed point
    assert above.metrics["overlap"] < 0.8  # α = 0.25 > α_c: retrieval is lost


def test_log_log_slope_recovers_a_power_law() -> None:
    xs = [2.0, 4.0, 8.0, 16.0]
    assert log_log_slope(xs, [3.0 * x**-1.5 for x in xs]) == pytest.approx(-1.5, rel=1e-12)


def test_phase_figure_draws_the_grid_and_the_critical_line() -> None:
    rows = [
        {"status": "ok", "coupling_scale": g, "beta": b, "seed": s, "num_stable": int(b * g > 1),
         "beta_c": 1.0 / g}
        for g in (0.5, 1.0, 2.0) for b in (0.25, 1.0, 4.0) for s in (0, 1)
    ]  # fmt: skip
    fig = phase_figure(rows)
    ax = fig.axes[0]
    values = np.asarray(ax.collections[0].get_array()).reshape(3, 3)
    assert values.tolist() == [[0, 0, 0], [0, 0, 1], [1, 1, 1]]  # rows: β, columns: g
    line = ax.lines[0]
    assert list(line.get_ydata()) == [2.0, 1.0, 0.5]
    assert math.isclose(ax.get_ylim()[0], 0.125)


@pytest.mark.slow
def test_vector_mean_field_energy_error_is_resolved_and_falls_as_one_over_dimension() -> None:
    # The Onsager reaction energy naive mean field omits is O(1/D) at fixed beta (Thouless,
    # Anderson and Palmer 1977): from D = 2 to D = 8 the error must shrink about fourfold,
    # stand far above the Monte Carlo error, and TAP (which keeps the term) must do better.
    settings = {"num_spins": 8, "beta": 0.8, "sweeps": 30, "chains": 512, "seed": 0}
    low = run_experiment("vector_mean_field_error", spin_dim=2, **settings).metrics
    high = run_experiment("vector_mean_field_error", spin_dim=8, **settings).metrics
    for point in (low, high):
        assert point["mean_field_energy_error"] > 20 * point["mc_energy_stderr"]
        assert point["tap_energy_error"] < 0.25 * point["mean_field_energy_error"]
    ratio = low["mean_field_energy_error"] / high["mean_field_energy_error"]
    assert 2.0 < ratio < 6.0  # 1/D predicts 4; no D-dependence 1, 1/D² 16


def test_log_log_fit_recovers_a_power_law_and_its_weighted_error() -> None:
    from spinformer.experiments.sweep_report import log_log_fit

    xs = [2.0, 4.0, 8.0, 16.0]
    slope, error = log_log_fit(xs, [3.0 * x**-1.5 for x in xs])
    assert slope == pytest.approx(-1.5, abs=1e-12) and error == pytest.approx(0.0, abs=1e-12)
    # Weighted: sigma_log = 0.1 everywhere gives the textbook 0.1/sqrt(sum (ln x - mean)^2).
    ys = [x**-1.0 for x in xs]
    slope, error = log_log_fit(xs, ys, [0.1 * y for y in ys])
    logs = np.log(xs)
    assert slope == pytest.approx(-1.0, abs=1e-12)
    assert error == pytest.approx(0.1 / math.sqrt(((logs - logs.mean()) ** 2).sum()), rel=1e-12)
    with pytest.raises(ValueError, match="xs"):
        log_log_fit([2.0], [1.0])


def test_crossing_load_interpolates_where_the_large_network_falls_below() -> None:
    from spinformer.experiments.sweep_report import crossing_load

    loads = [0.10, 0.12, 0.14, 0.16]
    small = [1.4 - 5.0 * a for a in loads]  # the lines 1.4 - 5a and 1.725 - 7.5a
    large = [1.725 - 7.5 * a for a in loads]  # meet at a = 0.325 / 2.5 = 0.13
    assert crossing_load(loads, small, large) == pytest.approx(0.13, abs=1e-12)
    assert crossing_load(loads, small, [s + 0.1 for s in small]) is None
