"""Broyden solver: converges to the defining equation, matches other solvers, differentiates."""

from __future__ import annotations

import pytest
import torch

from spinformer.solvers import available_solvers, fixed_point


def _linear_problem(seed: int, batch: int = 5, n: int = 12):
    """z = A z + b with spectral radius 0.9; the fixed point solves (I − A) z = b."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, n, n, generator=g, dtype=torch.float64)
    a = 0.9 * a / torch.linalg.matrix_norm(a, ord=2)[:, None, None]
    b = torch.randn(batch, n, generator=g, dtype=torch.float64)
    return a, b


def test_broyden_is_registered():
    assert "broyden" in available_solvers()


def test_broyden_solves_linear_fixed_point_exactly():
    a, b = _linear_problem(0)
    result = fixed_point(
        lambda z: (a @ z[..., None])[..., 0] + b, torch.zeros_like(b), method="broyden", tol=1e-12
    )
    expected = torch.linalg.solve(torch.eye(12, dtype=torch.float64) - a, b)
    assert bool(result.converged.all())
    torch.testing.assert_close(result.solution, expected, rtol=1e-10, atol=1e-10)
    # Broyden is superlinear on a linear map: far fewer iterations than Picard at rate 0.9.
    picard = fixed_point(
        lambda z: (a @ z[..., None])[..., 0] + b,
        torch.zeros_like(b),
        method="picard",
        tol=1e-12,
        max_iter=2000,
    )
    assert int(result.iterations.max()) < int(picard.iterations.min())


def test_broyden_nonlinear_matches_anderson_and_equation():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 8, 8, generator=g, dtype=torch.float64) * 0.3
    h = torch.randn(4, 8, generator=g, dtype=torch.float64)

    def f(z):
        return torch.tanh((w @ z[..., None])[..., 0] + h)

    a = fixed_point(f, torch.zeros_like(h), method="broyden", tol=1e-12)
    b = fixed_point(f, torch.zeros_like(h), method="anderson", tol=1e-12)
    torch.testing.assert_close(a.solution, b.solution, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(f(a.solution), a.solution, rtol=1e-10, atol=1e-10)


def test_broyden_per_sample_stopping_and_nonconvergence_reported():
    a, b = _linear_problem(2, batch=3)
    scale = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)[:, None, None]
    fn = lambda z: ((scale * a) @ z[..., None])[..., 0] + b  # noqa: E731
    result = fixed_point(fn, torch.zeros_like(b), method="broyden", tol=1e-12, check_every=1)
    assert bool(result.converged.all())
    assert int(result.iterations[0]) <= int(result.iterations[2])
    with pytest.warns(UserWarning, match="did not converge"):
        bad = fixed_point(fn, torch.zeros_like(b), method="broyden", tol=1e-14, max_iter=2)
    assert not bool(bad.converged.all())


def test_broyden_implicit_gradient_equals_unrolled():
    a, b = _linear_problem(3, batch=2, n=6)
    b = b.requires_grad_(True)

    def grad_of(implicit: bool):
        result = fixed_point(
            lambda z: torch.tanh((a @ z[..., None])[..., 0] + b),
            torch.zeros(2, 6, dtype=torch.float64),
            method="broyden",
            tol=1e-13,
            max_iter=300,
            implicit=implicit,
        )
        (grad,) = torch.autograd.grad((result.solution**2).sum(), b)
        return grad

    implicit, unrolled = grad_of(True), grad_of(False)
    assert float((implicit - unrolled).norm() / unrolled.norm()) < 1e-8


def test_broyden_rejects_bad_memory():
    with pytest.raises(ValueError, match="memory"):
        fixed_point(lambda z: z * 0.5, torch.ones(2, 3), method="broyden", memory=0)
