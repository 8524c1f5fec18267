"""Exact thermodynamics: published values, and every observable by two independent routes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spinformer.physics import (
    IsingModel,
    VectorSpinModel,
    all_states,
    chain,
    curie_weiss,
    enumeration_log_partition,
    sherrington_kirkpatrick,
    square_lattice,
    thermodynamics,
    transfer_matrix_log_partition,
)

# --- published values (issue acceptance) ----------------------------------------------------


def test_published_4x4_torus():
    model = square_lattice(4, beta=0.4)
    for route in ("enumerate", "transfer"):
        assert float(thermodynamics(model, route=route).log_partition) == pytest.approx(
            14.561093023844, abs=1e-11
        )


def test_published_chain_and_closed_form():
    beta, h, n = 1.0, 0.3, 12
    root = math.sqrt(math.exp(2 * beta) * math.sinh(beta * h) ** 2 + math.exp(-2 * beta))
    lam_p = math.exp(beta) * math.cosh(beta * h) + root
    lam_m = math.exp(beta) * math.cosh(beta * h) - root
    closed = math.log(lam_p**n + lam_m**n)
    model = chain(n, field=h, beta=beta)
    assert closed == pytest.approx(15.852987162846, abs=1e-11)
    for route in ("enumerate", "transfer"):
        assert float(thermodynamics(model, route=route).log_partition) == pytest.approx(
            closed, abs=1e-11
        )


def test_published_curie_weiss():
    n = 10
    terms = torch.tensor(
        [
            math.lgamma(n + 1)
            - math.lgamma(k + 1)
            - math.lgamma(n - k + 1)
            + ((2 * k - n) ** 2 - n) / (2 * n)
            for k in range(n + 1)
        ],
        dtype=torch.float64,
    )
    assert float(torch.logsumexp(terms, 0)) == pytest.approx(7.3751436727, abs=1e-10)
    assert float(thermodynamics(curie_weiss(n, beta=1.0)).log_partition) == pytest.approx(
        7.3751436727, abs=1e-10
    )


# --- enumeration vs transfer matrix ---------------------------------------------------------

OBSERVABLES = (
    "log_partition",
    "free_energy",
    "energy",
    "entropy",
    "heat_capacity",
    "magnetization",
    "susceptibility",
)


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (5, 2), (2, 2), (7, 1), (1, 6)])
@pytest.mark.parametrize("periodic", [True, False])
def test_enumeration_equals_transfer_matrix(shape, periodic, generator):
    n = shape[0] * shape[1]
    field = 0.3 * torch.randn(n, generator=generator, dtype=torch.float64)
    model = square_lattice(
        shape, coupling=0.8, field=field, beta=torch.tensor([0.3, 0.9]), periodic=periodic
    )
    enum = thermodynamics(model, route="enumerate")
    transfer = thermodynamics(model, route="transfer")
    assert enum.extras["route"] == "enumerate" and transfer.extras["route"] == "transfer"
    for name in OBSERVABLES:
        torch.testing.assert_close(
            getattr(transfer, name), getattr(enum, name), rtol=1e-9, atol=1e-10
        )


def test_transfer_matrix_is_finite_at_extreme_beta():
    model = square_lattice(6, beta=torch.tensor([1e-6, 1e3, 1e6]))
    log_z = transfer_matrix_log_partition(model)
    assert torch.isfinite(log_z).all()
    # ground state: 2 ordered states with E = -2N  ->  ln Z = 2 N beta + ln 2
    assert float(log_z[2]) == pytest.approx(2 * 36 * 1e6 + math.log(2), rel=1e-14)
    assert float(log_z[0]) == pytest.approx(36 * math.log(2), abs=1e-3)


def test_6x6_torus_is_instant_and_8_wide_strip_works():
    model = square_lattice((12, 8), beta=0.44)
    result = thermodynamics(model, susceptibility=False)
    assert result.extras["route"] == "transfer"
    assert torch.isfinite(result.heat_capacity)


# --- autodiff of ln Z vs direct expectations ------------------------------------------------


def test_autodiff_of_enumerated_log_partition_equals_expectations(generator):
    model0 = sherrington_kirkpatrick(8, beta=0.7, generator=generator, field=0.2)
    field = model0.field.clone().requires_grad_(True)
    beta = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    model = IsingModel(model0.couplings, field, beta)
    log_z = enumeration_log_partition(model, chunk_size=37)  # one inner block of 2^8 per chunk
    grad_h, grad_beta = torch.autograd.grad(log_z, (field, beta))
    direct = thermodynamics(model0, route="enumerate", chunk_size=50)
    torch.testing.assert_close(grad_h / 0.7, direct.magnetization)  # m = -dF/dh
    torch.testing.assert_close(-grad_beta, direct.energy)  # U = -d lnZ / d beta


@pytest.mark.parametrize("n", [6, 15])
def test_direct_expectations_by_brute_force(n, generator):
    field = -0.1 + 0.2 * torch.randn(n, generator=generator, dtype=torch.float64)
    model = sherrington_kirkpatrick(n, beta=1.3, generator=generator, field=field)
    states = all_states(n)
    energies = model.energy(states)  # the model's own energy, state by state
    p = torch.softmax(-1.3 * energies, 0)
    mean_e = (p * energies).sum()
    m = p @ states
    cov = (states - m).T @ ((states - m) * p[:, None])
    # N = 15 in chunks of 2^12 states: 8 chunks exercise the streaming merge
    result = thermodynamics(model, chunk_size=5000)
    torch.testing.assert_close(result.energy, mean_e)
    torch.testing.assert_close(result.heat_capacity, 1.3**2 * (p * (energies - mean_e) ** 2).sum())
    torch.testing.assert_close(result.magnetization, m)
    torch.testing.assert_close(result.susceptibility, 1.3 * cov)
    torch.testing.assert_close(result.entropy, -(p * p.log()).sum())


def test_heat_capacity_three_routes():
    betas = torch.tensor([0.2, 0.44, 0.8], dtype=torch.float64)
    model = square_lattice(4, beta=betas, field=0.05)
    enum = thermodynamics(model, route="enumerate")  # beta^2 Var(E)
    transfer = thermodynamics(model, route="transfer")  # -beta^2 dU/dbeta by autodiff
    eps = 1e-5
    u_plus = thermodynamics(model.with_beta(betas + eps), route="enumerate").energy
    u_minus = thermodynamics(model.with_beta(betas - eps), route="enumerate").energy
    finite_difference = -(betas**2) * (u_plus - u_minus) / (2 * eps)
    torch.testing.assert_close(enum.heat_capacity, transfer.heat_capacity, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(enum.heat_capacity, finite_difference, rtol=1e-7, atol=1e-7)


def test_batched_beta_equals_loop():
    betas = torch.tensor([0.1, 0.4, 0.44, 1.0, 3.0], dtype=torch.float64)
    for route in ("enumerate", "transfer"):
        batched = thermodynamics(square_lattice((3, 4), beta=betas, field=0.1), route=route)
        for k, b in enumerate(betas):
            single = thermodynamics(square_lattice((3, 4), beta=float(b), field=0.1), route=route)
            for name in OBSERVABLES:
                torch.testing.assert_close(getattr(batched, name)[k], getattr(single, name))


@settings(max_examples=25, deadline=None)
@given(
    beta=st.floats(0.01, 5.0),
    field=st.floats(-2.0, 2.0),
    coupling=st.floats(-2.0, 2.0),
)
def test_thermodynamic_identities_hold(beta, field, coupling):
    result = thermodynamics(curie_weiss(7, coupling=coupling, field=field, beta=beta))
    torch.testing.assert_close(result.free_energy, -result.log_partition / beta)
    torch.testing.assert_close(result.entropy, beta * (result.energy - result.free_energy))
    assert float(result.heat_capacity) >= -1e-12
    assert 0.0 <= float(result.entropy) <= 7 * math.log(2) + 1e-9
    eigenvalues = torch.linalg.eigvalsh(result.susceptibility)
    assert float(eigenvalues.min()) >= -1e-10  # chi = beta Cov is positive semi-definite


# --- vector spins ---------------------------------------------------------------------------


def test_free_heisenberg_spin_langevin_closed_form():
    # D = 3: Z = sinh(k)/k, m = R (coth k - 1/k), the Langevin function.
    field = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.4, 1.2], [2.0, 0.0, 0.0]], dtype=torch.float64)
    beta, radius = 1.7, 1.5
    model = VectorSpinModel(torch.zeros(3, 3, dtype=torch.float64), field, beta=beta, radius=radius)
    result = thermodynamics(model)
    kappa = beta * radius * field.norm(dim=-1)
    safe = kappa.clamp_min(1e-300)
    log_z = torch.where(kappa > 0, torch.log(torch.sinh(safe) / safe), torch.zeros_like(kappa))
    langevin = torch.where(kappa > 0, 1 / torch.tanh(safe) - 1 / safe, torch.zeros_like(kappa))
    torch.testing.assert_close(result.log_partition, log_z.sum())
    direction = field / field.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    torch.testing.assert_close(result.magnetization, radius * langevin[:, None] * direction)


@pytest.mark.parametrize("dim", [2, 3, 5])
def test_free_vector_spin_by_quadrature(dim, generator):
    """Single-site Z, <sigma>, Var(E) by Monte-Carlo-free quadrature over the polar angle."""
    beta, radius = 0.8, 1.3
    h = torch.randn(dim, generator=generator, dtype=torch.float64)
    model = VectorSpinModel(
        torch.zeros(1, 1, dtype=torch.float64), h[None], beta=beta, radius=radius
    )
    result = thermodynamics(model)
    # Uniform measure on S^{D-1}: the polar angle t has density ∝ sin^{D-2} t.
    t = torch.linspace(0, math.pi, 200001, dtype=torch.float64)
    density = torch.sin(t) ** (dim - 2)
    weight = torch.exp(beta * radius * h.norm() * torch.cos(t))
    z = torch.trapezoid(density * weight, t) / torch.trapezoid(density, t)
    mean_cos = torch.trapezoid(density * weight * torch.cos(t), t) / torch.trapezoid(
        density * weight, t
    )
    mean_cos2 = torch.trapezoid(density * weight * torch.cos(t) ** 2, t) / torch.trapezoid(
        density * weight, t
    )
    torch.testing.assert_close(result.log_partition, torch.log(z), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(
        result.magnetization[0], radius * mean_cos * h / h.norm(), rtol=1e-8, atol=1e-8
    )
    var_e = (radius * h.norm()) ** 2 * (mean_cos2 - mean_cos**2)
    torch.testing.assert_close(result.heat_capacity, beta**2 * var_e, rtol=1e-7, atol=1e-8)


def test_vector_susceptibility_is_autodiff_of_magnetization(generator):
    field = torch.randn(2, 4, generator=generator, dtype=torch.float64)
    zero = torch.zeros(2, 2, dtype=torch.float64)
    result = thermodynamics(VectorSpinModel(zero, field, beta=0.6, radius=2.0))

    def magnetization(h: torch.Tensor) -> torch.Tensor:
        return thermodynamics(
            VectorSpinModel(zero, h, beta=0.6, radius=2.0), susceptibility=False
        ).magnetization

    jac = torch.autograd.functional.jacobian(magnetization, field)
    torch.testing.assert_close(result.susceptibility, jac)


def test_interacting_vector_model_points_to_approximations():
    model = VectorSpinModel(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), dim=3)
    with pytest.raises(ValueError, match="use method='mean_field'"):
        thermodynamics(model)


def test_route_is_validated():
    with pytest.raises(ValueError, match="route must be"):
        thermodynamics(curie_weiss(3), route="magic")
    with pytest.raises(ValueError, match="needs a lattice model"):
        thermodynamics(curie_weiss(3), route="transfer")
