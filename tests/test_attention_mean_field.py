"""Mean-field self-consistency: Jacobian, pitchfork, Curie–Weiss, continuation, phases."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.optimize import brentq

from spinformer.attention import (
    critical_beta,
    critical_beta_qk,
    fixed_points,
    mean_field_jacobian,
    mean_field_map,
    phase_diagram,
    self_consistent,
    spectral_radius,
)

F64 = torch.float64


def _pitchfork():
    v = torch.ones(2, dtype=F64)  # |v|² = 2
    return torch.stack([v, -v]), torch.eye(2, dtype=F64), v


def _random_system(seed: int, n: int = 5, d: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=F64)
    w = torch.randn(d, d, generator=g, dtype=F64)
    return x, w, g


def test_jacobian_is_beta_cov_w_and_matches_autograd():
    x, w, g = _random_system(0)
    m = torch.randn(4, 3, generator=g, dtype=F64)
    jac = mean_field_jacobian(m, x, w, 0.8)
    for i in range(4):
        auto = torch.autograd.functional.jacobian(
            lambda mi: mean_field_map(mi[None], x, w, 0.8)[0], m[i]
        )
        torch.testing.assert_close(jac[i], auto)
    # the transpose-convention form β Cov Wᵀ is a different matrix with the same spectrum
    alpha = torch.softmax(0.8 * m @ (x @ w).T, -1)
    mean = alpha @ x
    cov = torch.einsum("qn,na,nb->qab", alpha, x, x) - mean[:, :, None] * mean[:, None, :]
    other = 0.8 * cov @ w.T
    assert float((other - jac).abs().max()) > 1e-3
    torch.testing.assert_close(spectral_radius(other), spectral_radius(jac))


def test_one_step_from_the_queries_is_value_free_attention():
    x, w, _ = _random_system(1)
    step = mean_field_map(x, x, w, 0.5)
    scores = x @ w.T @ x.T  # (i, j): x_jᵀ W x_i
    torch.testing.assert_close(step, torch.softmax(0.5 * scores, -1) @ x)


def test_pitchfork_critical_beta_and_fixed_points():
    x, eye, v = _pitchfork()
    crit = critical_beta(x, eye)
    assert bool(crit.found)
    assert float(crit.beta) == pytest.approx(0.5, abs=1e-10)  # continuation
    assert float(crit.closed_form) == pytest.approx(0.5, abs=1e-14)
    assert float(crit.spectral_radius) == pytest.approx(1.0, abs=1e-8)
    below = fixed_points(x, eye, 0.3)
    assert below.num_fixed_points == 1 and below.num_stable == 1
    assert float(below.magnetization.norm()) < 1e-9
    assert float(below.basin_fraction[0]) == 1.0
    above = fixed_points(x, eye, 1.0)
    assert above.num_stable == 2 and above.num_fixed_points == 3
    s = above.magnetization[above.stable] @ v / 2.0
    torch.testing.assert_close(
        s.abs(), torch.full((2,), 0.9575040241, dtype=F64), atol=1e-9, rtol=0
    )
    assert float(s.sum().abs()) < 1e-9  # ±s
    zero = ~above.stable
    assert float(above.magnetization[zero].norm()) < 1e-9
    assert float(above.spectral_radius[zero]) == pytest.approx(2.0)  # ρ(J(0)) = 2β
    torch.testing.assert_close(above.basin_fraction[above.stable], torch.full((2,), 0.5, dtype=F64))
    # each token retrieves its own side
    assert set(above.assignment.tolist()) == {0, 1}


def test_pitchfork_solution_satisfies_tanh_equation_at_many_beta():
    x, eye, v = _pitchfork()
    for beta in (0.6, 0.8, 1.0, 1.7):
        s = float(self_consistent(x, eye, beta).magnetization[0] @ v / 2.0)
        assert s == pytest.approx(math.tanh(2 * beta * s), abs=1e-11)
        assert s > 0.1


def test_curie_weiss_bridge():
    spins = torch.tensor([[1.0], [-1.0]], dtype=F64)
    eye = torch.eye(1, dtype=F64)
    result = self_consistent(spins, eye, 1.5, stability=True)
    torch.testing.assert_close(
        result.magnetization[:, 0], torch.tensor([0.858559636640, -0.858559636640], dtype=F64),
        atol=1e-11, rtol=0,
    )  # fmt: skip
    assert bool(result.converged.all()) and bool(result.stable.all())
    assert float(critical_beta(spins, eye).beta) == pytest.approx(1.0, abs=1e-10)


def test_continuation_for_non_centred_tokens_matches_semi_closed_form():
    # tokens {v, −v, u}, v ⊥ u, |v|² = 2, |u|² = 1, W = I: the high-temperature branch is m = a u
    # with a = e^{βa}/(2 + e^{βa}); along v the Jacobian eigenvalue is 2β(1 − a), so β_c solves
    # 2β(1 − a) = 1 together with the branch equation.
    v = torch.tensor([1.0, 1.0, 0.0], dtype=F64)
    u = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    x = torch.stack([v, -v, u])
    crit = critical_beta(x, torch.eye(3, dtype=F64))

    def branch_residual(beta: float) -> float:
        a = 1.0 - 1.0 / (2.0 * beta)
        return a * (2.0 + math.exp(beta * a)) - math.exp(beta * a)

    expected = brentq(branch_residual, 0.6, 1.5, xtol=1e-14)
    assert bool(crit.found)
    assert math.isnan(float(crit.closed_form))  # not centred
    assert float(crit.beta) == pytest.approx(expected, abs=1e-9)
    assert float(crit.magnetization @ u) == pytest.approx(1.0 - 1.0 / (2.0 * expected), abs=1e-7)


def test_continuation_matches_closed_form_for_centred_batches():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 6, 4, generator=g, dtype=F64)
    x = x - x.mean(dim=-2, keepdim=True)
    w = torch.randn(4, 4, generator=g, dtype=F64)
    w = w @ w.T / 4  # symmetric positive: the instability is a real eigenvalue crossing +1
    crit = critical_beta(x, w)
    assert bool(crit.found.all())
    cov = x.transpose(-1, -2) @ x / 6
    closed = 1.0 / torch.linalg.eigvals(cov @ w).abs().amax(-1)
    torch.testing.assert_close(crit.closed_form, closed)
    torch.testing.assert_close(crit.beta, closed, atol=1e-9, rtol=0)


def test_field_dominated_branch_never_loses_stability():
    # imbalanced ±1 patterns in D = 1: m = tanh(βm + ln2/2), the favoured branch stays stable
    spins = torch.tensor([[1.0], [1.0], [-1.0]], dtype=F64)
    crit = critical_beta(spins, torch.eye(1, dtype=F64), beta_max=50.0)
    assert not bool(crit.found) and math.isinf(float(crit.beta))
    assert bool((crit.branch_spectral_radius < 1).all())


def test_implicit_gradient_matches_unrolled_gradient():
    x, w, _ = _random_system(4, n=4, d=3)
    w = w @ w.T / 3

    def loss(implicit: bool) -> torch.Tensor:
        weight = w.clone().requires_grad_(True)
        beta = torch.tensor(0.7, dtype=F64, requires_grad=True)
        m = self_consistent(x, weight, beta, implicit=implicit, tol=1e-13).magnetization
        (m**2).sum().backward()
        return torch.cat([weight.grad.flatten(), beta.grad.flatten()])

    torch.testing.assert_close(loss(True), loss(False), atol=1e-8, rtol=1e-6)


def test_hopfield_retrieval_and_phase_diagram():
    # well-separated centred patterns: at large β each query retrieves its own pattern
    g = torch.Generator().manual_seed(5)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=F64))
    x = 2.0 * q[:4]  # orthogonal patterns, |x_i| = 2
    x = x - x.mean(0)
    eye = torch.eye(6, dtype=F64)
    retrieved = self_consistent(x, eye, 8.0, stability=True)
    assert bool(retrieved.converged.all()) and bool(retrieved.stable.all())
    torch.testing.assert_close(retrieved.magnetization, x, atol=1e-3, rtol=0)
    crit = critical_beta(x, eye)
    diagram = phase_diagram(x, eye, [0.5 * float(crit.closed_form), 8.0], num_random=4)
    assert diagram.num_stable.tolist() == [1, 4]
    torch.testing.assert_close(diagram.basin_fractions[0], torch.tensor([1.0, 0, 0, 0], dtype=F64))
    torch.testing.assert_close(diagram.basin_fractions[1], torch.full((4,), 0.25, dtype=F64))
    assert float(diagram.critical.beta) == pytest.approx(float(crit.closed_form), abs=1e-9)


def test_bad_input_is_rejected():
    x, w, _ = _random_system(6)
    with pytest.raises(ValueError, match="w_qk must have shape"):
        self_consistent(x, torch.eye(2, dtype=F64), 1.0)
    with pytest.raises(ValueError, match="beta must be positive"):
        self_consistent(x, w, 0.0)
    with pytest.raises(ValueError, match="beta must be finite"):
        self_consistent(x, w, float("inf"))
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x must be finite"):
        self_consistent(bad, w, 1.0)
    with pytest.raises(ValueError, match="init must have shape"):
        self_consistent(x, w, 1.0, init=torch.zeros(2, 5, dtype=F64))
    with pytest.raises(ValueError, match="single system"):
        fixed_points(x[None].expand(2, 5, 3), w, 1.0)
    with pytest.raises(ValueError, match="num_betas"):
        critical_beta(x, w, num_betas=1)
    with pytest.raises(ValueError, match="beta_min must be < beta_max"):
        critical_beta(x, w, beta_min=2.0, beta_max=1.0)
    with pytest.raises(ValueError, match="betas must be positive"):
        phase_diagram(x, w, [1.0, -1.0])
    with pytest.raises(ValueError, match="method must be one of"):
        self_consistent(x, w, 1.0, method="newton")


def test_critical_beta_qk_equals_the_full_coupling_route_and_the_pitchfork():
    # query-key coordinates (d×d Jacobians β Cov_α(q, k)) against the D×D route
    # β Cov_α(x) W_Kᵀ W_Q on the same heads, without biases
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 12, 6, generator=gen, dtype=torch.float64)
    w_q = torch.randn(4, 2, 6, generator=gen, dtype=torch.float64)
    w_k = torch.randn(4, 2, 6, generator=gen, dtype=torch.float64)
    q, k = x @ w_q.transpose(-1, -2), x @ w_k.transpose(-1, -2)
    full = critical_beta(x, w_k.transpose(-1, -2) @ w_q, num_betas=16, bisection_steps=30)
    reduced = critical_beta_qk(q, k, num_betas=16, bisection_steps=30)
    assert int(full.found.sum()) >= 3
    torch.testing.assert_close(reduced.beta, full.beta, rtol=1e-9, atol=0)
    # the query of the high-temperature state is W_Q m
    torch.testing.assert_close(
        reduced.magnetization, (full.magnetization.unsqueeze(-2) @ w_q.transpose(-1, -2))[..., 0, :]
    )
    # tokens ±v, |v|² = 2, W_Q = W_K = I: pitchfork at β_c = 1/2 (closed form)
    v = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    pitchfork = critical_beta_qk(v, v)
    assert abs(float(pitchfork.beta) - 0.5) < 1e-6
    assert abs(float(pitchfork.closed_form) - 0.5) < 1e-12


def test_critical_beta_qk_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="k must be a floating tensor"):
        critical_beta_qk(torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="same"):
        critical_beta_qk(torch.zeros(3, 2), torch.zeros(3, 4))
