"""Divergence is never reported as convergence, and an empty batch is an empty result.

The residual |f(z) − z|/|f(z)| is scale invariant, so it is checked against its closed form on
iterates whose squared norms overflow float32; a sample whose iterate or f(iterate) is NaN or
infinite is not converged, whatever solver runs, and the caller is warned.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from spinformer.solvers import SolverWarning, available_solvers, fixed_point, relative_residual

SOLVERS = available_solvers()


def test_the_solvers_under_test_are_all_registered_ones():
    assert {"picard", "anderson", "broyden"} <= set(SOLVERS)


def test_relative_residual_does_not_overflow_in_float32():
    # z = 1e19 (four entries): |f(z)|^2 = 4 * 2.25e38 overflows float32; the ratio is exactly 1/3
    z = torch.full((2, 4), 1e19)
    residual = relative_residual(z, 1.5 * z)
    torch.testing.assert_close(residual, torch.full((2,), 1.0 / 3.0), rtol=1e-6, atol=0)


def test_relative_residual_of_a_non_finite_row_is_infinite():
    z = torch.zeros(3, 2)
    fz = torch.tensor([[1.0, 0.0], [math.inf, 0.0], [math.nan, 1.0]])
    residual = relative_residual(z, fz)
    assert residual.tolist() == [1.0, math.inf, math.inf]


@pytest.mark.parametrize("method", SOLVERS)
def test_large_iterate_is_not_converged(method):
    # one iteration of z -> 1.5 z from z = 1e19 cannot reach the fixed point z = 0
    with pytest.warns(SolverWarning, match="did not converge"):
        result = fixed_point(lambda z: 1.5 * z, torch.full((3, 4), 1e19), method=method, max_iter=1)
    assert not result.converged.any()
    assert (result.residual > 0.1).all()


def test_picard_divergence_is_not_converged_and_warns():
    # z -> 2z + 1 from 0: z_k = 2^k - 1 overflows float32 near k = 128
    with pytest.warns(SolverWarning, match="diverged"):
        result = fixed_point(lambda z: 2 * z + 1, torch.zeros(3, 4), method="picard", max_iter=2000)
    assert not result.converged.any()
    assert torch.isinf(result.residual).all()
    assert (result.iterations < 200).all()  # it stopped when f(z) overflowed, not at max_iter


@pytest.mark.parametrize("method", SOLVERS)
def test_non_finite_map_is_not_converged_for_every_solver(method):
    # f is finite only on |z| <= 0.5 and its fixed point z = 10 lies outside: every route hits inf
    def f(z: torch.Tensor) -> torch.Tensor:
        return torch.where(z.abs() > 0.5, torch.full_like(z, math.inf), 0.9 * z + 1.0)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fixed_point(f, torch.zeros(2, 3), method=method, max_iter=50)
    # not converged; the solution is the best finite iterate (Anderson, Broyden) or the last one
    assert not result.converged.any()
    assert ((result.residual > 0.1) | torch.isinf(result.residual)).all()
    assert any(issubclass(w.category, SolverWarning) for w in caught)


@pytest.mark.parametrize("method", SOLVERS)
def test_nan_map_is_not_converged(method):
    with pytest.warns(SolverWarning, match="diverged"):
        result = fixed_point(lambda z: z * math.nan, torch.ones(2, 3), method=method)
    assert not result.converged.any()


@pytest.mark.parametrize("method", SOLVERS)
@pytest.mark.parametrize(("shape", "batch_dims"), [((0, 4), 1), ((0, 3, 2), 2), ((2, 0, 5), 2)])
def test_empty_batch_gives_an_empty_result(method, shape, batch_dims):
    weight = torch.tensor(0.5, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = fixed_point(
            lambda z: weight * z + 1.0, torch.zeros(shape), method=method, batch_dims=batch_dims
        )
    assert result.solution.shape == shape
    batch = shape[:batch_dims]
    assert result.converged.shape == result.iterations.shape == result.residual.shape == batch


@pytest.mark.parametrize("method", SOLVERS)
def test_empty_event_converges_trivially(method):
    result = fixed_point(lambda z: 2 * z + 1, torch.zeros(3, 0), method=method)
    assert result.solution.shape == (3, 0)
    assert result.converged.all()


@pytest.mark.parametrize("method", SOLVERS)
def test_map_of_the_wrong_shape_is_a_named_error(method):
    with pytest.raises(
        ValueError, match=r"f must return a tensor of z0's shape \(3, 4\), got \(3,\)"
    ):
        fixed_point(lambda z: z.sum(-1), torch.zeros(3, 4), method=method)


def test_relative_residual_from_a_given_distance_is_the_same():
    """The residual from the caller's |f(z) − z| (e.g. Anderson's Gram diagonal) equals the
    one from the vectors, on the plain route and on the scaled one (a non-finite distance)."""
    g = torch.Generator().manual_seed(3)
    z = torch.randn(4, 7, generator=g, dtype=torch.float64)
    fz = z + 0.1 * torch.randn(4, 7, generator=g, dtype=torch.float64)
    distance = torch.linalg.vector_norm(fz - z, dim=-1)
    torch.testing.assert_close(relative_residual(z, fz, fz - z, distance), relative_residual(z, fz))
    overflowed = torch.full_like(distance, math.inf)  # the scaled route recomputes it
    torch.testing.assert_close(
        relative_residual(z, fz, fz - z, overflowed), relative_residual(z, fz)
    )
