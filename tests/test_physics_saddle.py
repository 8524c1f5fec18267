"""Steepest-descent free energy of spherical spins: autodiff vs closed forms, 1/D accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spinformer.physics import VectorSpinModel, sherrington_kirkpatrick, thermodynamics
from spinformer.physics.meanfield import transformer_radius
from spinformer.physics.saddle import (
    saddle_gradient_hessian,
    saddle_log_partition,
    saddle_magnetization,
    saddle_potential,
    saddle_response,
    solve_saddle,
)

F64 = torch.float64


def _instance(n=6, dim=8, scale=0.5, seed=1):
    g = torch.Generator().manual_seed(seed)
    couplings = scale * sherrington_kirkpatrick(n, generator=g).couplings
    field = 0.7 * torch.randn(n, dim, generator=g, dtype=F64)
    return couplings, field


def test_autodiff_magnetization_equals_closed_form_and_constraint_holds():
    couplings, field = _instance()
    radius = transformer_radius(8)
    r = thermodynamics(VectorSpinModel(couplings, field, 1.3, radius=radius), method="saddle")
    assert bool(r.converged)
    t = r.extras["multipliers"]
    beta = torch.tensor(1.3, dtype=F64)
    closed = saddle_magnetization(couplings, field, beta, radius, t)
    torch.testing.assert_close(r.magnetization, closed, rtol=1e-12, atol=1e-12)
    # R² = D (V⁻¹)_ii + |m_i|²: each spin on its sphere on average
    precision = torch.diag(2 * t) - 1.3 * couplings
    green = torch.linalg.inv(precision)
    torch.testing.assert_close(
        8 * green.diagonal() + (closed**2).sum(-1), torch.full((6,), radius**2, dtype=F64)
    )


def test_closed_form_gradient_and_hessian_match_autograd():
    couplings, field = _instance(5, 4, seed=2)
    beta = torch.tensor(0.9, dtype=F64)
    t = torch.full((5,), 2.0, dtype=F64, requires_grad=True)
    grad, hess, _ = saddle_gradient_hessian(t.detach(), couplings, field, beta, 1.2)
    auto = torch.autograd.functional.hessian(
        lambda tt: saddle_potential(tt, couplings, field, beta, 1.2), t.detach()
    )
    (auto_grad,) = torch.autograd.grad(saddle_potential(t, couplings, field, beta, 1.2), t)
    torch.testing.assert_close(grad, auto_grad)
    torch.testing.assert_close(hess, auto)


def test_susceptibility_matches_finite_differences():
    couplings, field = _instance(4, 4, seed=3)
    model = VectorSpinModel(couplings, field, 1.1, radius=1.0)
    r = thermodynamics(model, method="saddle")
    eps = 1e-6
    shifted = field.clone()
    shifted[2, 1] += eps
    r2 = thermodynamics(
        VectorSpinModel(couplings, shifted, 1.1), method="saddle", susceptibility=False
    )
    fd = (r2.magnetization - r.magnetization) / eps
    torch.testing.assert_close(r.susceptibility[:, :, 2, 1], fd, rtol=1e-4, atol=1e-6)


def test_free_spins_closed_form_and_one_over_d_accuracy():
    """J = 0: m = (2R²/D)βh/(1 + √(1 + 4R²β²|h|²/D²)); its error vs Bessel falls like 1/D."""
    g = torch.Generator().manual_seed(4)
    dims, errors = [8, 16, 32, 64], []
    for dim in dims:
        radius = transformer_radius(dim)
        field = torch.randn(5, dim, generator=g, dtype=F64)
        field = (
            field
            / field.norm(dim=-1, keepdim=True)
            * radius
            * torch.linspace(0.2, 3, 5, dtype=F64)[:, None]
        )
        model = VectorSpinModel(torch.zeros(5, 5, dtype=F64), field, 1.0, radius=radius)
        saddle = thermodynamics(model, method="saddle", susceptibility=False)
        norm2 = (field**2).sum(-1, keepdim=True)
        closed = (
            (2 * radius**2 / dim) * field / (1 + torch.sqrt(1 + 4 * radius**2 * norm2 / dim**2))
        )
        torch.testing.assert_close(saddle.magnetization, closed, rtol=1e-10, atol=1e-12)
        exact = thermodynamics(model, susceptibility=False)
        errors.append(
            float(((saddle.magnetization - exact.magnetization).norm(dim=-1) / radius).max())
        )
    slope = float(np.polyfit(np.log(dims), np.log(errors), 1)[0])
    assert -1.2 < slope < -0.8, (slope, errors)


def test_saddle_rejects_asymmetric_couplings():
    couplings = torch.tensor([[0.0, 1.0], [0.5, 0.0]], dtype=F64)
    with pytest.raises(ValueError, match="symmetric"):
        solve_saddle(couplings, torch.ones(2, 3, dtype=F64), torch.tensor(1.0, dtype=F64), 1.0)
    assert math.isfinite(transformer_radius(3))


def _autograd_response(couplings, field, beta, radius, tol):
    """m = β⁻¹∂ln Z/∂h through saddle_log_partition (autograd), with ln Z, differentiable."""
    t = solve_saddle(couplings, field, beta, radius, tol=tol).solution
    leaf = field if field.requires_grad else field.detach().requires_grad_(True)
    log_z = saddle_log_partition(couplings, leaf, beta, radius, t)
    (grad,) = torch.autograd.grad(log_z.sum(), leaf, create_graph=True)
    return grad / beta[..., None, None], log_z


def _response_inputs(seed=5, batch=2, n=4, dim=3):
    g = torch.Generator().manual_seed(seed)
    raw = 0.6 * torch.rand(batch, n, n, generator=g, dtype=F64)
    field = torch.randn(batch, n, dim, generator=g, dtype=F64)
    beta = torch.tensor([0.7, 1.6], dtype=F64)[:batch]
    return raw, field, beta


def _symmetric(raw):
    """Symmetric couplings with zero diagonal from an unconstrained matrix."""
    j = 0.5 * (raw + raw.transpose(-1, -2))
    return j - torch.diag_embed(j.diagonal(dim1=-2, dim2=-1))


def test_closed_form_response_backward_passes_gradcheck():
    """The closed-form backward of (m, ln Z) against finite differences of re-solved saddles."""
    raw, field, beta = _response_inputs()
    inputs = tuple(x.clone().requires_grad_(True) for x in (raw, field, beta))

    def response(raw_, field_, beta_):
        m, log_z, _ = saddle_response(_symmetric(raw_), field_, beta_, 1.3, tol=1e-13)
        return m, log_z

    assert torch.autograd.gradcheck(response, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_closed_form_response_matches_the_autograd_route():
    """Values and vector-Jacobian products equal those of autograd through ln Z; so does the
    create_graph backward, which keeps a graph for higher derivatives."""
    raw, field, beta = _response_inputs(seed=6)
    inputs = [x.clone().requires_grad_(True) for x in (raw, field, beta)]
    g = torch.Generator().manual_seed(7)
    m_ref, log_z_ref = _autograd_response(_symmetric(inputs[0]), *inputs[1:], 1.3, 1e-13)
    grad_m = torch.randn(m_ref.shape, generator=g, dtype=F64)
    grad_log_z = torch.randn(log_z_ref.shape, generator=g, dtype=F64)
    reference = torch.autograd.grad((m_ref * grad_m).sum() + (log_z_ref * grad_log_z).sum(), inputs)
    for create_graph in (False, True):
        m, log_z, result = saddle_response(_symmetric(inputs[0]), *inputs[1:], 1.3, tol=1e-13)
        assert bool(result.converged.all())
        torch.testing.assert_close(m, m_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(log_z, log_z_ref, rtol=1e-12, atol=1e-12)
        grads = torch.autograd.grad(
            (m * grad_m).sum() + (log_z * grad_log_z).sum(), inputs, create_graph=create_graph
        )
        for got, want in zip(grads, reference, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
            assert (got.grad_fn is not None) == create_graph


def test_response_is_the_same_when_the_batch_is_split_over_threads():
    """With several intra-op threads the systems are factorised in chunks, one per thread: the
    same values and gradients as one thread, and the thread count is restored."""
    g = torch.Generator().manual_seed(8)
    raw = 0.6 * torch.rand(3, 2, 4, 4, generator=g, dtype=F64)
    field = torch.randn(3, 2, 4, 3, generator=g, dtype=F64)
    beta = torch.linspace(0.5, 1.5, 6, dtype=F64).reshape(3, 2)
    grad_m = torch.randn(3, 2, 4, 3, generator=g, dtype=F64)
    threads = torch.get_num_threads()

    def run(count):
        torch.set_num_threads(count)
        inputs = [x.clone().requires_grad_(True) for x in (raw, field, beta)]
        m, log_z, _ = saddle_response(_symmetric(inputs[0]), *inputs[1:], 1.3, tol=1e-12)
        grads = torch.autograd.grad((m * grad_m).sum() + log_z.sum(), inputs)
        assert torch.get_num_threads() == count
        return (m, log_z, *grads)

    try:
        reference, split = run(1), run(4)
    finally:
        torch.set_num_threads(threads)
    for got, want in zip(split, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_response_values_follow_the_autograd_route_at_a_loose_tolerance():
    """Both routes take m and ln Z one Newton step past the solver's t*, so with t* converged
    only to 1e-4 they still agree to second order in its error, far closer than m at t*."""
    raw, field, beta = _response_inputs(seed=9)
    couplings = _symmetric(raw)
    m, log_z, result = saddle_response(couplings, field, beta, 1.3, tol=1e-4)
    m_ref, log_z_ref = (x.detach() for x in _autograd_response(couplings, field, beta, 1.3, 1e-4))
    at_solution = saddle_magnetization(couplings, field, beta, 1.3, result.solution)
    first_order = float((at_solution - m_ref).abs().max())
    assert first_order > 1e-9  # the solve did stop early
    assert float((m - m_ref).abs().max()) < 1e-3 * first_order
    assert float((log_z - log_z_ref).abs().max()) < 1e-3 * first_order
