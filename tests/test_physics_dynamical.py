"""Dynamical (Plefka[t−1,t]) mean field against exact kinetic Ising and autograd Hessians."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spinformer.physics.dynamical import (
    dynamical_mean_field,
    kinetic_ising_step,
    kinetic_vector_step,
    stationary_dynamical_mean_field,
    vector_step,
    vector_step_vjp,
    vector_step_with_vjp,
)
from spinformer.physics.exact import all_states
from spinformer.physics.vmf import phi, phi_inverse, transformer_radius

F64 = torch.float64


def test_kinetic_ising_naive_eps2_second_order_eps3_against_enumeration():
    """Exact m(t) = Σ_s p(s) tanh(β(h + Js)) over independent previous spins (2^10 states)."""
    g = torch.Generator().manual_seed(0)
    n = 10
    base = torch.randn(n, n, generator=g, dtype=F64) / n**0.5  # asymmetric
    field = 0.5 * torch.randn(n, generator=g, dtype=F64)
    m_prev = 1.6 * torch.rand(n, generator=g, dtype=F64) - 0.8
    states = all_states(n)
    prob = torch.log((1 + states * m_prev) / 2).sum(-1).exp()
    eps = [0.2, 0.1, 0.05]
    naive, second = [], []
    for e in eps:
        j = e * base
        exact = (prob[:, None] * torch.tanh(field + states @ j.T)).sum(0)
        naive.append(float((kinetic_ising_step(m_prev, j, field, 1.0, 1) - exact).abs().max()))
        second.append(float((kinetic_ising_step(m_prev, j, field, 1.0, 2) - exact).abs().max()))
    assert 1.8 < np.polyfit(np.log(eps), np.log(naive), 1)[0] < 2.2
    assert np.polyfit(np.log(eps), np.log(second), 1)[0] > 2.8
    assert all(s < nv for s, nv in zip(second, naive, strict=True))


def test_vector_second_order_is_hessian_contraction():
    """Closed-form correction vs ½ tr(∇²φ K) with autograd Hessians and K = Σ_j J² C_j."""
    g = torch.Generator().manual_seed(1)
    dim, n, beta = 6, 5, 1.3
    radius = transformer_radius(dim)
    j = 0.3 * torch.randn(n, n, generator=g, dtype=F64)
    m_prev = torch.randn(n, dim, generator=g, dtype=F64)
    m_prev = (
        m_prev
        / m_prev.norm(dim=-1, keepdim=True)
        * radius
        * 0.9
        * torch.rand(n, 1, generator=g, dtype=F64)
    )
    field = torch.randn(n, dim, generator=g, dtype=F64)
    first = kinetic_vector_step(m_prev, j, field, beta, radius, 1)
    second = kinetic_vector_step(m_prev, j, field, beta, radius, 2)
    theta_prev = phi_inverse(m_prev, beta, radius)
    cov = torch.stack(
        [
            torch.autograd.functional.jacobian(lambda t: phi(t, beta, radius), th) / beta
            for th in theta_prev
        ]
    )
    k = torch.einsum("ij,jab->iab", j**2, cov)
    theta = field + j @ m_prev
    corr = []
    for i in range(n):
        hess = torch.stack(
            [
                torch.autograd.functional.hessian(lambda t, c=c: phi(t, beta, radius)[c], theta[i])
                for c in range(dim)
            ]
        )
        corr.append(0.5 * torch.einsum("cab,ab->c", hess, k[i]))
    torch.testing.assert_close(second - first, torch.stack(corr), rtol=1e-10, atol=1e-12)


def test_stationary_state_and_implicit_gradient():
    g = torch.Generator().manual_seed(2)
    n, dim = 6, 8
    radius = transformer_radius(dim)
    j = torch.softmax(torch.randn(2, n, n, generator=g, dtype=F64), -1)
    field = torch.randn(2, n, dim, generator=g, dtype=F64).requires_grad_(True)
    grads = []
    for implicit in (True, False):
        result = stationary_dynamical_mean_field(
            j, field, 1.0, radius=radius, order=2, tol=1e-13, max_iter=300, implicit=implicit
        )
        assert bool(result.converged.all())
        step = kinetic_vector_step(result.solution.detach(), j, field.detach(), 1.0, radius, 2)
        torch.testing.assert_close(step, result.solution.detach(), rtol=1e-11, atol=1e-11)
        (grad,) = torch.autograd.grad((result.solution**3).sum(), field)
        grads.append(grad)
    assert float((grads[0] - grads[1]).norm() / grads[1].norm()) < 1e-8
    traj = dynamical_mean_field(
        torch.zeros(n, dim, dtype=F64), j[0], field[0].detach(), 1.0, 5, radius=radius
    )
    assert traj.shape == (6, n, dim)


def test_dynamical_bad_input():
    with pytest.raises(ValueError, match="order"):
        kinetic_ising_step(torch.zeros(3), torch.zeros(3, 3), 0.0, 1.0, order=3)
    with pytest.raises(ValueError, match="beta"):
        kinetic_vector_step(torch.zeros(3, 4), torch.zeros(3, 3), torch.zeros(3, 4), -1.0, 1.0)
    with pytest.raises(ValueError, match="spin"):
        dynamical_mean_field(torch.zeros(3), torch.zeros(3, 3), 0.0, 1.0, 2, spin="xy")
    with pytest.raises(ValueError, match="radius"):
        dynamical_mean_field(torch.zeros(3, 4), torch.zeros(3, 3), torch.zeros(3, 4), 1.0, 2)
    assert math.isfinite(float(kinetic_ising_step(torch.zeros(2), torch.eye(2), 0.1, 1.0).sum()))


class _StepWithClosedFormVJP(torch.autograd.Function):
    """vector_step whose backward (w.r.t. m_prev) is the closed-form vector_step_vjp."""

    @staticmethod
    def forward(ctx, m_prev, couplings, field, beta, radius, order):
        ctx.save_for_backward(m_prev, couplings, field, beta)
        ctx.radius, ctx.order = radius, order
        return vector_step(m_prev, couplings, field, beta, radius, order)

    @staticmethod
    def backward(ctx, grad):
        m_prev, couplings, field, beta = ctx.saved_tensors
        vjp = vector_step_vjp(m_prev, couplings, field, beta, ctx.radius, ctx.order)
        return vjp(grad), None, None, None, None, None


def _vector_problem(seed: int, order: int):
    g = torch.Generator().manual_seed(seed)
    b, n, dim = 2, 5, 6
    radius = transformer_radius(dim)
    j = torch.softmax(3.0 * torch.randn(b, n, n, generator=g, dtype=F64), -1)
    field = torch.randn(b, n, dim, generator=g, dtype=F64)
    m_prev = phi(torch.randn(b, n, dim, generator=g, dtype=F64), 1.0, radius)
    beta = 0.5 + torch.rand(b, 1, 1, generator=g, dtype=F64)  # per system, as in the blocks
    return m_prev, j, field, beta, radius


@pytest.mark.parametrize("order", [1, 2])
def test_closed_form_step_vjp_passes_gradcheck(order):
    """The hand-written (∂ step/∂m)ᵀ y against finite differences of the step (float64)."""
    m_prev, j, field, beta, radius = _vector_problem(5, order)
    m_prev.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda m: _StepWithClosedFormVJP.apply(m, j, field, beta, radius, order), (m_prev,)
    )


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("scalar_beta", [True, False])
def test_closed_form_step_vjp_equals_autograd(order, scalar_beta):
    m_prev, j, field, beta, radius = _vector_problem(6, order)
    if scalar_beta:
        beta = 1.3
    y = torch.randn(m_prev.shape, generator=torch.Generator().manual_seed(7), dtype=F64)
    leaf = m_prev.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(vector_step(leaf, j, field, beta, radius, order), leaf, y)
    got = vector_step_vjp(m_prev, j, field, beta, radius, order, j * j if order == 2 else None)(y)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("order", [1, 2])
def test_step_from_rest_equals_step_from_zero_magnetization(order):
    """m_prev=None skips the products with m(t−1) = 0; the numbers are those of zeros."""
    m_prev, j, field, beta, radius = _vector_problem(8, order)
    expected = vector_step(torch.zeros_like(m_prev), j, field, beta, radius, order)
    torch.testing.assert_close(vector_step(None, j, field, beta, radius, order), expected)


@pytest.mark.parametrize("order", [1, 2])
def test_step_with_vjp_is_the_step_and_its_vjp(order):
    """One evaluation gives the differentiable step and the closed-form VJP of its m_prev."""
    m_prev, j, field, beta, radius = _vector_problem(9, order)
    field = field.requires_grad_(True)
    out, vjp = vector_step_with_vjp(m_prev, j, field, beta, radius, order)
    torch.testing.assert_close(out, vector_step(m_prev, j, field, beta, radius, order))
    (grad,) = torch.autograd.grad(out.sum(), field)  # still differentiable in the field
    torch.testing.assert_close(grad, torch.autograd.grad(
        vector_step(m_prev, j, field, beta, radius, order).sum(), field)[0])  # fmt: skip
    y = torch.randn(m_prev.shape, generator=torch.Generator().manual_seed(10), dtype=F64)
    torch.testing.assert_close(vjp(y), vector_step_vjp(m_prev, j, field, beta, radius, order)(y))


def test_second_order_step_into_a_workspace_is_the_same_step():
    m_prev, j, field, beta, radius = _vector_problem(11, 2)
    workspace = torch.full(j.shape, float("nan"), dtype=F64)  # whatever it held is overwritten
    with torch.no_grad():
        expected = vector_step(m_prev, j, field, beta, radius, 2)
        got = vector_step(m_prev, j, field, beta, radius, 2, j * j, workspace)
    torch.testing.assert_close(got, expected)


def test_second_order_couplings_backward_passes_gradcheck():
    """The hand-written backward of the order-2 step to the couplings and the field (at a
    constant m_prev, as in the implicit backward's f(z*)) against finite differences."""
    m_prev, j, field, beta, radius = _vector_problem(12, 2)
    beta = beta.requires_grad_(True)
    inputs = (j.requires_grad_(True), field.requires_grad_(True), beta)
    assert torch.autograd.gradcheck(
        lambda c, h, b: vector_step(m_prev, c, h, b, radius, 2, c.detach() ** 2), inputs
    )
    assert torch.autograd.gradcheck(lambda c, h, b: vector_step(m_prev, c, h, b, radius, 2), inputs)


@pytest.mark.parametrize("with_vjp", [False, True])
def test_second_order_couplings_backward_equals_autograd(with_vjp):
    """The same gradients (couplings, field, β) as autograd through the plain step, which a
    differentiable m_prev takes."""
    m_prev, j, field, beta, radius = _vector_problem(13, 2)
    y = torch.randn(m_prev.shape, generator=torch.Generator().manual_seed(14), dtype=F64)
    leaves = [t.clone().requires_grad_(True) for t in (j, field, beta)]
    if with_vjp:
        out = vector_step_with_vjp(m_prev, *leaves, radius, 2)[0]
    else:
        out = vector_step(m_prev, *leaves, radius, 2)
    got = torch.autograd.grad(out, leaves, y)
    plain = m_prev.clone().requires_grad_(True)  # a differentiable m_prev: autograd throughout
    references = [t.clone().requires_grad_(True) for t in (j, field, beta)]
    reference = vector_step(plain, *references, radius, 2)
    expected = torch.autograd.grad(reference, references, y)
    torch.testing.assert_close(out, reference.detach())
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("order", [1, 2])
def test_step_from_a_kept_evaluation_is_the_same_step(order):
    """vector_step_with_vjp with ``known`` (the couplings part kept by an evaluation without
    autograd at the same m_prev) gives the same step, gradients and VJP; a kept evaluation at
    other values, or one whose m_prev was written since, is not used."""
    m_prev, j, field, beta, radius = _vector_problem(15, order)
    y = torch.randn(m_prev.shape, generator=torch.Generator().manual_seed(16), dtype=F64)
    kept: list = []
    with torch.no_grad():
        vector_step(m_prev.clone(), j, field, beta, radius, order, j * j, torch.empty_like(j), kept)
    assert len(kept) == (3 if order == 1 else 7)
    stale: list = []
    with torch.no_grad():
        moved = m_prev.clone()
        vector_step(moved, j, field, beta, radius, order, j * j, None, stale)
        moved.mul_(1.0)  # the same values, written since: its version changed
    leaves = [t.clone().requires_grad_(True) for t in (j, field, beta)]
    plain_out, plain_vjp = vector_step_with_vjp(m_prev, *leaves, radius, order)
    expected = torch.autograd.grad(plain_out, leaves, y)
    used = []
    for known in (kept, stale, None):
        leaves = [t.clone().requires_grad_(True) for t in (j, field, beta)]
        out, vjp = vector_step_with_vjp(m_prev, *leaves, radius, order, None, known)
        torch.testing.assert_close(out, plain_out, rtol=1e-13, atol=1e-15)
        for g, e in zip(torch.autograd.grad(out, leaves, y), expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(vjp(y), plain_vjp(y), rtol=1e-12, atol=1e-14)
        used.append(_graph_nodes(out))
    if order == 1:  # θ = h + J m from the kept evaluation: a node of its own, not J m again
        assert ["_KnownFieldBackward" in nodes for nodes in used] == [True, False, False]
    else:
        assert kept[2].grad_fn is not None and stale[2].grad_fn is None  # θ: used, not used


def _graph_nodes(out: torch.Tensor) -> set[str]:
    """Names of the autograd nodes behind ``out``."""
    names, stack, seen = set(), [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


@pytest.mark.parametrize("order", [1, 2])
def test_step_from_a_kept_evaluation_passes_gradcheck(order):
    """The backward of the step from a kept evaluation (couplings, field, β) against finite
    differences (float64)."""
    m_prev, j, field, beta, radius = _vector_problem(17, order)

    def step(c, h, b):
        kept: list = []
        with torch.no_grad():
            vector_step(m_prev, c, h, b, radius, order, None, None, kept)
        return vector_step_with_vjp(m_prev, c, h, b, radius, order, None, kept)[0]

    inputs = tuple(t.requires_grad_(True) for t in (j, field, beta))
    assert torch.autograd.gradcheck(step, inputs)


@pytest.mark.parametrize("scalar_beta", [True, False])
def test_first_order_step_without_autograd_is_the_autograd_step(scalar_beta):
    """The naive step without autograd (φ = g θ with g from one norm of θ, J m + h in J m's
    layout) against the differentiable step, and a strided field against a contiguous one."""
    m_prev, j, field, beta, radius = _vector_problem(18, 1)
    if scalar_beta:
        beta = 0.8
    expected = vector_step(m_prev.requires_grad_(True), j, field, beta, radius, 1)
    strided = field.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, other strides
    with torch.no_grad():
        for h in (field, strided):
            got = vector_step(m_prev.detach(), j, h, beta, radius, 1)
            assert got.is_contiguous()
            torch.testing.assert_close(got, expected.detach(), rtol=1e-12, atol=1e-14)


def test_step_from_a_kept_evaluation_in_the_same_memory():
    """A kept evaluation whose m_prev is the same memory (a solver's solution viewed again) is
    used without comparing values, and gives the autograd gradients; once that memory is
    written, it is not used."""
    m_prev, j, field, beta, radius = _vector_problem(19, 1)
    y = torch.randn(m_prev.shape, generator=torch.Generator().manual_seed(20), dtype=F64)
    flat = m_prev.reshape(2, -1).clone()
    kept: list = []
    with torch.no_grad():
        vector_step(flat.view(m_prev.shape), j, field, beta, radius, 1, None, None, kept)
    leaves = [t.clone().requires_grad_(True) for t in (j, field, beta)]
    out = vector_step_with_vjp(flat.view(m_prev.shape), *leaves, radius, 1, None, kept)[0]
    assert "_KnownFieldBackward" in _graph_nodes(out)
    references = [t.clone().requires_grad_(True) for t in (j, field, beta)]
    reference = vector_step(m_prev.clone().requires_grad_(True), *references, radius, 1)
    torch.testing.assert_close(out, reference.detach(), rtol=1e-13, atol=1e-15)
    for g, e in zip(
        torch.autograd.grad(out, leaves, y), torch.autograd.grad(reference, references, y),
        strict=True,
    ):  # fmt: skip
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)
    flat.add_(1.0)  # written since it was kept
    out = vector_step_with_vjp(flat.view(m_prev.shape), *leaves, radius, 1, None, kept)[0]
    assert "_KnownFieldBackward" not in _graph_nodes(out)


@pytest.mark.parametrize("beta", [0.7, "per system"])
def test_phi_gain_is_the_scale_of_phi(beta):
    """vmf.phi_gain's (g, u) against φ and u = √(1 + β²|θ|²/R²) of vmf.phi_terms (float64)."""
    from spinformer.physics.vmf import phi_gain, phi_terms

    _, _, field, b, radius = _vector_problem(21, 1)
    b = b if beta == "per system" else beta
    theta = 3.0 * field
    gain, u = phi_gain(theta, b, radius)
    value, _, expected_u = phi_terms(theta, b, radius)
    torch.testing.assert_close(u, expected_u, rtol=1e-14, atol=0)
    torch.testing.assert_close(theta * gain, value, rtol=1e-14, atol=0)
