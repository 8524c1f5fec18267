"""Mean-field and TAP thermodynamics, and the vector-spin responses, against exact routes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spinformer.physics import (
    IsingModel,
    VectorSpinModel,
    sherrington_kirkpatrick,
    thermodynamics,
)
from spinformer.physics.meanfield import ising_response
from spinformer.physics.vmf import (
    bessel_response,
    large_d_response,
    phi_inverse,
    transformer_radius,
)

F64 = torch.float64


def _slope(xs, ys) -> float:
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


# -- responses ---------------------------------------------------------------------------------


def test_bessel_response_d3_is_langevin():
    """D = 3: A(κ) = coth κ − 1/κ (closed form), so m = R L(βR|θ|) θ̂."""
    theta = torch.tensor([[0.3, -0.2, 0.5], [2.0, 1.0, -3.0]], dtype=F64)
    beta, radius = 0.7, 1.5
    kappa = beta * radius * theta.norm(dim=-1, keepdim=True)
    langevin = 1.0 / torch.tanh(kappa) - 1.0 / kappa
    expected = radius * langevin * theta / theta.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(bessel_response(theta, beta, radius), expected, rtol=1e-11, atol=0)


def test_large_d_response_properties():
    g = torch.Generator().manual_seed(0)
    radius = transformer_radius(16)
    theta = torch.randn(50, 16, generator=g, dtype=F64) * 5
    m = large_d_response(theta, 1.3, radius)
    assert bool((m.norm(dim=-1) < radius).all())
    torch.testing.assert_close(phi_inverse(m, 1.3, radius), theta, rtol=1e-10, atol=1e-10)
    jac = torch.autograd.functional.jacobian(
        lambda t: large_d_response(t, 1.3, radius), torch.zeros(16, dtype=F64)
    )
    torch.testing.assert_close(jac, 0.65 * torch.eye(16, dtype=F64))


def test_large_d_vs_bessel_error_falls_like_one_over_d():
    """Max relative error over β|θ|/R ∈ [0.05, 20] for D = 8 … 512: log-log slope ≈ −1."""
    g = torch.Generator().manual_seed(1)
    dims = [8, 16, 32, 64, 128, 256, 512]
    errors = []
    for dim in dims:
        radius = transformer_radius(dim)
        direction = torch.randn(dim, generator=g, dtype=F64)
        direction = direction / direction.norm()
        scale = torch.logspace(math.log10(0.05), math.log10(20.0), 60, dtype=F64)
        theta = scale[:, None] * radius * direction
        exact = bessel_response(theta, 1.0, radius)
        approx = large_d_response(theta, 1.0, radius)
        errors.append(float(((approx - exact).norm(dim=-1) / exact.norm(dim=-1)).max()))
    slope = _slope(dims, errors)
    assert -1.15 < slope < -0.85, (slope, errors)


def test_response_bad_input():
    with pytest.raises(ValueError, match="dim"):
        transformer_radius(2)
    with pytest.raises(ValueError, match="beta must be positive"):
        large_d_response(torch.ones(3, 4), 0.0, 1.0)
    with pytest.raises(ValueError, match="theta must be finite"):
        bessel_response(torch.tensor([[float("nan"), 1.0, 0.0]]), 1.0, 1.0)
    with pytest.raises(ValueError, match="beta must be positive"):
        ising_response(torch.ones(3), -1.0)


# -- Ising mean field and TAP ------------------------------------------------------------------


def _sk_instance(n: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    couplings = sherrington_kirkpatrick(n, generator=g).couplings
    field = 0.5 * torch.randn(n, generator=g, dtype=F64)
    return couplings, field


def test_naive_error_scales_as_eps2_and_tap_as_eps3():
    couplings, field = _sk_instance()
    eps = [0.2, 0.1, 0.05, 0.025]
    naive, tap = [], []
    for e in eps:
        model = IsingModel(e * couplings, field, beta=1.0)
        exact = thermodynamics(model, susceptibility=False)
        for method, store in (("mean_field", naive), ("tap", tap)):
            r = thermodynamics(model, method=method, susceptibility=False)
            store.append(float((r.magnetization - exact.magnetization).abs().max()))
    assert 1.85 < _slope(eps, naive) < 2.15, naive
    assert 2.8 < _slope(eps, tap) < 3.2, tap
    assert 6.5 < tap[-2] / tap[-1] < 9.5  # halving ε cuts the TAP error ≈ 8×


def test_naive_mean_field_matches_closed_forms():
    """Autodiff observables of the MF ln Z vs the linear-response closed forms."""
    couplings, field = _sk_instance(8, seed=3)
    beta = 0.8
    model = IsingModel(0.5 * couplings, field, beta)
    r = thermodynamics(model, method="mean_field")
    m = r.magnetization
    torch.testing.assert_close(
        m, torch.tanh(beta * (field + 0.5 * couplings @ m)), rtol=0, atol=1e-11
    )
    chi = beta * torch.linalg.inv(torch.diag(1.0 / (1.0 - m**2)) - beta * 0.5 * couplings)
    torch.testing.assert_close(r.susceptibility, chi, rtol=1e-9, atol=1e-10)
    energy = -(0.5 * m @ (0.5 * couplings) @ m + field @ m)
    torch.testing.assert_close(r.energy, energy, rtol=1e-10, atol=1e-10)
    assert bool(r.converged) and int(r.iterations) > 0


def test_tap_fixed_point_is_stationary_point_of_tap_free_energy():
    """The textbook TAP update (solver) vs the TAP functional (autograd): ∂Φ/∂m = 0."""
    couplings, field = _sk_instance(9, seed=4)
    beta = 1.2
    j = 0.3 * couplings
    r = thermodynamics(IsingModel(j, field, beta), method="tap", susceptibility=False)
    m = r.magnetization.clone().requires_grad_(True)
    entropy = -((1 + m) / 2 * torch.log((1 + m) / 2) + (1 - m) / 2 * torch.log((1 - m) / 2)).sum()
    var = 1 - m**2
    phi = entropy + beta * (0.5 * m @ j @ m + field @ m) + 0.25 * beta**2 * var @ (j**2) @ var
    (grad,) = torch.autograd.grad(phi, m)
    assert float(grad.abs().max()) < 1e-9
    torch.testing.assert_close(r.log_partition, phi.detach(), rtol=1e-11, atol=1e-11)


def test_batched_beta_sweep_matches_single_calls():
    couplings, field = _sk_instance(6, seed=5)
    betas = torch.tensor([0.3, 0.7, 1.1], dtype=F64)
    batched = thermodynamics(IsingModel(0.4 * couplings, field, betas), method="tap")
    for k, b in enumerate(betas):
        single = thermodynamics(IsingModel(0.4 * couplings, field, b), method="tap")
        torch.testing.assert_close(batched.magnetization[k], single.magnetization)
        torch.testing.assert_close(batched.heat_capacity[k], single.heat_capacity)
    assert batched.converged.shape == (3,)


# -- vector spins --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["mean_field", "tap"])
def test_vector_spins_in_one_dimension_are_ising(method):
    """D = 1, R = 1: the sphere is {±1}; every observable equals Ising's (ln Z up to N ln 2)."""
    couplings, field = _sk_instance(5, seed=6)
    j = 0.4 * couplings
    a = thermodynamics(IsingModel(j, field, 0.8), method=method)
    b = thermodynamics(VectorSpinModel(j, field[:, None], 0.8), method=method)
    torch.testing.assert_close(a.magnetization, b.magnetization[:, 0])
    torch.testing.assert_close(a.susceptibility, b.susceptibility[:, 0, :, 0])
    torch.testing.assert_close(a.heat_capacity, b.heat_capacity)
    torch.testing.assert_close(a.log_partition - 5 * math.log(2.0), b.log_partition)


@pytest.mark.parametrize("method", ["mean_field", "tap", "saddle"])
def test_vector_mean_field_at_zero_coupling_is_exact_single_site(method):
    """With J = 0 naive MF and TAP are exact (von Mises–Fisher); compared to method='exact'.

    (Against Monte Carlo at weak coupling once a sampler exists; the saddle is a large-D
    approximation, checked to its 1/D accuracy.)
    """
    g = torch.Generator().manual_seed(7)
    dim = 4
    field = torch.randn(3, dim, generator=g, dtype=F64)
    model = VectorSpinModel(torch.zeros(3, 3, dtype=F64), field, 1.1, radius=1.0)
    exact = thermodynamics(model)
    approx = thermodynamics(model, method=method)
    tol = 1e-10 if method != "saddle" else 0.1
    torch.testing.assert_close(approx.magnetization, exact.magnetization, rtol=tol, atol=tol)
    torch.testing.assert_close(approx.log_partition, exact.log_partition, rtol=tol, atol=tol)
    if method != "saddle":
        torch.testing.assert_close(
            approx.susceptibility, exact.susceptibility, rtol=1e-9, atol=1e-9
        )
        torch.testing.assert_close(approx.heat_capacity, exact.heat_capacity, rtol=1e-9, atol=1e-9)


def test_xy_naive_and_tap_error_scaling_against_exact_quadrature():
    """XY spins (D = 2), N = 3: exact ln Z and m by the periodic trapezoid rule (spectrally
    accurate) over the three angles; naive error ∝ ε², TAP ∝ ε³."""
    g = torch.Generator().manual_seed(1)
    n, nodes = 3, 48
    base = sherrington_kirkpatrick(n, generator=g).couplings
    field = 0.7 * torch.randn(n, 2, generator=g, dtype=F64)
    angles = torch.arange(nodes, dtype=F64) * 2 * math.pi / nodes
    grid = torch.stack(torch.meshgrid(*([angles] * n), indexing="ij"), -1).reshape(-1, n)
    spins = torch.stack([grid.cos(), grid.sin()], -1)
    eps = [0.4, 0.2, 0.1, 0.05]
    naive, tap = [], []
    for e in eps:
        j = e * base
        energy = -0.5 * torch.einsum("snd,nm,smd->s", spins, j, spins) - torch.einsum(
            "snd,nd->s", spins, field
        )
        weights = torch.softmax(-energy, 0)
        exact_m = torch.einsum("s,snd->nd", weights, spins)
        for method, store in (("mean_field", naive), ("tap", tap)):
            r = thermodynamics(VectorSpinModel(j, field, 1.0), method=method, susceptibility=False)
            store.append(float((r.magnetization - exact_m).abs().max()))
    assert 1.85 < _slope(eps, naive) < 2.15, naive
    assert 2.8 < _slope(eps, tap) < 3.2, tap


def test_vector_mean_field_agrees_with_monte_carlo_at_weak_coupling():
    """Heisenberg spins (D = 3), SK couplings × 0.3: within 5 standard errors of heat-bath MC."""
    g = torch.Generator().manual_seed(0)
    couplings = 0.3 * sherrington_kirkpatrick(6, generator=g).couplings
    field = 0.8 * torch.randn(6, 3, generator=g, dtype=F64)
    model = VectorSpinModel(couplings, field, 1.0)
    mc = thermodynamics(
        model,
        method="monte_carlo",
        algorithm="heat_bath",
        sweeps=600,
        chains=8,
        generator=torch.Generator().manual_seed(1),
    )
    for method in ("mean_field", "tap"):
        approx = thermodynamics(model, method=method, susceptibility=False)
        z = (approx.magnetization - mc.magnetization).abs() / mc.stderr["magnetization"]
        assert float(z.max()) < 5.0, (method, float(z.max()))
