"""Fixed-point solvers: the defining equation, implicit vs unrolled gradients, diagnostics."""

from __future__ import annotations

import warnings

import pytest
import torch

from spinformer.solvers import SolverWarning, available_solvers, fixed_point

SOLVERS = [m for m in ("picard", "anderson") if m in available_solvers()]


def _contraction(generator: torch.Generator, batch: int = 5, n: int = 8):
    weight = (
        0.5 * torch.randn(n, n, generator=generator, dtype=torch.float64) / n**0.5
    ).requires_grad_(True)
    bias = torch.randn(batch, n, generator=generator, dtype=torch.float64).requires_grad_(True)
    return weight, bias, (lambda z: torch.tanh(z @ weight.T + bias))


@pytest.mark.parametrize("method", SOLVERS)
def test_solution_satisfies_the_fixed_point_equation(method, generator):
    _weight, bias, f = _contraction(generator)
    result = fixed_point(f, torch.zeros_like(bias), method=method, tol=1e-12, max_iter=500)
    assert result.all_converged
    torch.testing.assert_close(result.solution, f(result.solution), rtol=0, atol=1e-10)
    assert result.converged.shape == result.iterations.shape == result.residual.shape == (5,)


@pytest.mark.parametrize("method", SOLVERS)
def test_implicit_gradient_equals_unrolled_gradient(method, generator):
    weight, bias, f = _contraction(generator)
    result = fixed_point(f, torch.zeros_like(bias), method=method, tol=1e-13, max_iter=500)
    target = torch.linspace(-1, 1, 8, dtype=torch.float64)
    grads = torch.autograd.grad(((result.solution - target) ** 2).sum(), (weight, bias))
    z = torch.zeros_like(bias)
    for _ in range(300):  # long unrolled iteration, differentiated by plain autograd
        z = f(z)
    reference = torch.autograd.grad(((z - target) ** 2).sum(), (weight, bias))
    for ours, ref in zip(grads, reference, strict=True):
        assert float((ours - ref).norm() / ref.norm()) < 1e-6


@pytest.mark.parametrize("method", SOLVERS)
def test_unrolled_mode_differentiates_through_iterations(method, generator):
    _weight, bias, f = _contraction(generator)
    implicit = fixed_point(f, torch.zeros_like(bias), method=method, tol=1e-13, max_iter=500)
    unrolled = fixed_point(
        f, torch.zeros_like(bias), method=method, tol=1e-13, max_iter=500, implicit=False
    )
    g_implicit = torch.autograd.grad(implicit.solution.sum(), bias)[0]
    g_unrolled = torch.autograd.grad(unrolled.solution.sum(), bias)[0]
    assert float((g_implicit - g_unrolled).norm() / g_unrolled.norm()) < 1e-6


def test_gradcheck_through_implicit_layer(generator):
    weight = (0.3 * torch.randn(3, 3, generator=generator, dtype=torch.float64)).requires_grad_(
        True
    )
    bias = torch.randn(2, 3, generator=generator, dtype=torch.float64).requires_grad_(True)

    def layer(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return fixed_point(
            lambda z: torch.tanh(z @ w.T + b), torch.zeros_like(b), tol=1e-14, max_iter=500
        ).solution

    assert torch.autograd.gradcheck(layer, (weight, bias))


def test_per_sample_convergence_and_iterations():
    # Sample k contracts with rate a_k: slower samples need more iterations; the divergent one is flagged.
    rates = torch.tensor([0.1, 0.5, 0.9, 1.5], dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fixed_point(
            lambda z: rates[:, None] * z + 1.0,
            torch.zeros(4, 1, dtype=torch.float64),
            method="picard",
            tol=1e-8,
            max_iter=200,
        )
    assert result.converged.tolist() == [True, True, True, False]
    it = result.iterations.tolist()
    assert it[0] < it[1] < it[2] <= 200
    torch.testing.assert_close(result.solution[:3, 0], 1.0 / (1.0 - rates[:3]), rtol=1e-7, atol=0)
    assert any(
        issubclass(w.category, SolverWarning) and "1 of 4 samples" in str(w.message) for w in caught
    )


def test_batch_dims_and_event_shape():
    z0 = torch.zeros(2, 3, 4, 5, dtype=torch.float64)
    result = fixed_point(lambda z: 0.5 * z + 1.0, z0, batch_dims=2, tol=1e-10)
    assert result.converged.shape == (2, 3)
    torch.testing.assert_close(result.solution, torch.full_like(z0, 2.0))


@pytest.mark.parametrize("method", SOLVERS)
def test_closed_form_adjoint_product_equals_autograd(method, generator):
    # f(z) = tanh(W z + b): (∂f/∂z)ᵀ y = Wᵀ((1 − f²) y), handed to the implicit backward
    weight, bias, f = _contraction(generator)
    target = torch.linspace(-1, 1, 8, dtype=torch.float64)

    def vjp(z):
        slope = 1.0 - f(z) ** 2
        return lambda y: (slope * y) @ weight.detach()

    grads = []
    for product in (None, vjp):
        result = fixed_point(
            f, torch.zeros_like(bias), method=method, tol=1e-13, max_iter=500, vjp=product
        )
        grads.append(torch.autograd.grad(((result.solution - target) ** 2).sum(), (weight, bias)))
    for closed, auto in zip(*grads, strict=True):
        torch.testing.assert_close(closed, auto, rtol=1e-9, atol=1e-12)


def test_memory_of_implicit_backward_does_not_keep_iterations(generator):
    # The graph of the implicit route holds one application of f, whatever the iteration count.
    _weight, bias, f = _contraction(generator)
    result = fixed_point(f, torch.zeros_like(bias), method="picard", tol=1e-14, max_iter=1000)
    node, depth = result.solution.grad_fn, 0
    while node is not None and depth < 100:
        node = node.next_functions[0][0] if node.next_functions else None
        depth += 1
    assert depth < 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "newton-magic"}, "method must be one of"),
        ({"tol": 0.0}, "tol must be positive"),
        ({"max_iter": 0}, "max_iter must be a positive integer"),
        ({"damping": 1.5}, r"damping must be in \(0, 1\]"),
        ({"batch_dims": 3}, "batch_dims must be in"),
        ({"check_every": 0}, "check_every must be a positive integer"),
    ],
)
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fixed_point(lambda z: z, torch.zeros(2, 2), **kwargs)


def test_non_finite_start_is_rejected():
    with pytest.raises(ValueError, match="z0 must be finite"):
        fixed_point(lambda z: z, torch.tensor([[float("nan")]]))
