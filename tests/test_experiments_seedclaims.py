"""Magnetizations with input-dependent couplings (Bal 2021), the module anatomy, the ergodicity figure."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from spinformer.experiments import run_experiment
from spinformer.experiments.seedclaims import softmax_field_couplings


def _brute_log_partition(field: torch.Tensor, scores: torch.Tensor, gain: float, beta: float):
    """ln Z by a plain Python sum over all ±1 states (no library enumeration)."""
    couplings = softmax_field_couplings(field, scores, gain)
    n = field.shape[0]
    terms = []
    for state in itertools.product((-1.0, 1.0), repeat=n):
        s = torch.tensor(state, dtype=torch.float64)
        energy = -0.5 * s @ couplings @ s - field @ s
        terms.append(-beta * energy)
    return torch.logsumexp(torch.stack(terms), 0)


def test_softmax_field_couplings_are_symmetric_with_zero_diagonal():
    field = torch.randn(5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    couplings = softmax_field_couplings(field, torch.zeros(5, 5, dtype=torch.float64), 1.3)
    assert torch.equal(couplings, couplings.T)
    assert torch.all(couplings.diagonal() == 0)
    # each row of the softmax sums to one, so the symmetrised couplings sum to N in all
    assert float(couplings.sum()) == pytest.approx(5.0, abs=1e-12)


def test_autodiff_and_correlation_routes_agree_to_1e_10():
    result = run_experiment("input_dependent_magnetization")
    assert result.metrics["max_abs_difference"] <= 1e-10
    # the coupling term matters: fixed couplings would miss a sizeable part of m
    assert result.metrics["coupling_term_share"] > 0.05


def test_magnetization_matches_finite_differences_of_brute_force_ln_z():
    num_spins, beta, gain, seed = 5, 1.2, 0.8, 3
    result = run_experiment(
        "input_dependent_magnetization", num_spins=num_spins, beta=beta, gain=gain, seed=seed
    )
    generator = torch.Generator().manual_seed(seed)
    field = torch.randn(num_spins, generator=generator, dtype=torch.float64)
    scores = torch.randn(num_spins, num_spins, generator=generator, dtype=torch.float64)
    scores = 0.5 * (scores + scores.T)
    step = 1e-5
    for i, row in enumerate(result.tables["magnetization by site"]):
        shift = torch.zeros(num_spins, dtype=torch.float64)
        shift[i] = step
        up = _brute_log_partition(field + shift, scores, gain, beta)
        down = _brute_log_partition(field - shift, scores, gain, beta)
        finite_difference = float(up - down) / (2 * step * beta)
        assert row["m_i (formula)"] == pytest.approx(finite_difference, abs=1e-8)
        assert row["h_i"] == float(field[i])


def test_without_field_dependence_the_coupling_term_vanishes():
    result = run_experiment("input_dependent_magnetization", gain=0.0, num_spins=4)
    assert result.metrics["coupling_term_share"] == pytest.approx(0.0, abs=1e-14)
    assert result.metrics["max_abs_difference"] <= 1e-12


def test_module_anatomy_parts_add_up_to_the_free_energy_derivative():
    result = run_experiment("module_anatomy", num_tokens=6, dim=8)
    assert result.metrics["saddle_converged"] is True
    # closed-form m = βV⁻¹h (envelope theorem) plus autodiff through J(h) = autodiff of ln Z
    assert result.metrics["parts_sum_error"] < 1e-10
    shares = [v for k, v in result.metrics.items() if k.startswith("share ")]
    assert len(shares) == 4 and math.fsum(shares) == pytest.approx(1.0)
    rows = result.tables["sizes of the parts of m_i, per token"]
    assert [r["token"] for r in rows] == ["Assignment", "statements", "Assignment", "statements",
                                          "are", "used"]  # fmt: skip
    assert all(r["residual (field)"] > r["channel mixing (J(h))"] > 0 for r in rows)


def test_seed_claim_configs_are_checked_by_key():
    with pytest.raises(ValueError, match="num_tokens must be"):
        run_experiment("module_anatomy", num_tokens=65)
    with pytest.raises(ValueError, match="num_spins must be"):
        run_experiment("input_dependent_magnetization", num_spins=17)


def test_ergodicity_draws_time_averages_against_the_ensemble():
    result = run_experiment("ergodicity", size=4, sweeps=40, chains=2, cw_size=8, cw_sweeps=20)
    figure = result.figures["time vs ensemble averages"]
    hot, cold = figure.axes[:2]
    assert "ergodic" in hot.get_title() and "basin" in cold.get_title()
    assert [t.get_text() for t in cold.get_legend().get_texts()] == [
        "time average, start +",
        "time average, start -",
        "exact ensemble <m>",
    ]
    # the hot panel's last running average is the plain mean of the whole chain (route: table)
    running_energy = hot.lines[0].get_ydata()
    assert running_energy[-1] == pytest.approx(result.tables["time vs ensemble averages"][0]["E/N"])
