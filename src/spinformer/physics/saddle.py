r"""Steepest-descent (saddle-point) free energy of spherical vector spins with symmetric couplings.

Following Bal, "Approximate free energy minimization" (2021), each spherical constraint
|σ_i|² = R² is written as a Fourier integral over a multiplier t_i; the spins are then Gaussian and
integrate out exactly, leaving

.. math::

    \ln Z \approx \min_{t}\ \Phi(t),\qquad
    \Phi(t) = R^2\sum_i t_i - \frac D2 \ln\det V + \frac{\beta^2}{2}\sum_{a=1}^{D} h_a^{\mathsf T} V^{-1} h_a
              - N c_D,\qquad V = 2\,\mathrm{diag}(t) - \beta J,

with h_a the a-th field component over sites and c_D = D/2 − (D/2) ln(D/R²) the constant that
makes ln Z = 0 at J = 0, h = 0 (uniform probability measure on each sphere, as ``method="exact"``).
Φ is convex on {V ≻ 0} (−ln det and the matrix-fractional term are convex), so the saddle is
its minimum. The stationarity condition R² = D (V⁻¹)_ii + |m_i|² says that each spin is on its
sphere on average: thermal spread plus mean, with m = βV⁻¹h (the envelope theorem; here
m = β⁻¹ ∂ln Z/∂h is computed by autodiff and checked against this closed form).

Solver. The map t ↦ t − Δ/(1 + λ) with Newton step Δ = H⁻¹∇Φ and decrement
λ = √(∇Φᵀ Δ / (D/2)) (Φ is D/2 times a self-concordant barrier plus convex terms; the full
step t − Δ once λ < 1/4, where Newton converges quadratically) is iterated to its
fixed point by :mod:`spinformer.solvers` ("picard": mixing could leave the domain). Every step
has norm < 1 in the metric of the barrier −ln det V, so it stays in its Dikin ellipsoid and V
stays positive definite. Gradient and Hessian are closed forms, with G = V⁻¹ and m = βGh:

.. math::

    \partial_{t_i}\Phi = R^2 - D\,G_{ii} - |m_i|^2,\qquad
    \partial_{t_i}\partial_{t_j}\Phi = 2D\,G_{ij}^2 + 4\,G_{ij}\, m_i\cdot m_j .

ln Z is made differentiable to second order with one undamped Newton step from the detached
solution (:mod:`spinformer.physics._variational`). At J = 0 the saddle gives
m = (2R²/D) βh / (1 + √(1 + 4R²β²|h|²/D²)), a large-D form of the Bessel response (error ∝ 1/D).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from spinformer._validation import check_positive_int, check_symmetric
from spinformer.physics.models import VectorSpinModel
from spinformer.physics.thermo import (
    Thermodynamics,
    register_method,
    thermodynamics_from_log_partition,
)
from spinformer.solvers import FixedPointResult, fixed_point

__all__ = [
    "saddle_gradient_hessian",
    "saddle_log_partition",
    "saddle_magnetization",
    "saddle_potential",
    "saddle_thermodynamics",
    "solve_saddle",
]


def _precision(couplings: Tensor, multipliers: Tensor, beta: Tensor) -> Tensor:
    return torch.diag_embed(2.0 * multipliers) - beta[..., None, None] * couplings


def saddle_potential(
    multipliers: Tensor, couplings: Tensor, field: Tensor, beta: Tensor, radius: float
) -> Tensor:
    """Φ(t) of the module docstring; multipliers (..., N), couplings (..., N, N), field (..., N, D)."""
    n, dim = field.shape[-2], field.shape[-1]
    precision = _precision(couplings, multipliers, beta)
    chol = torch.linalg.cholesky(precision)
    logdet = 2.0 * torch.log(chol.diagonal(dim1=-2, dim2=-1)).sum(-1)
    solved = torch.cholesky_solve(field, chol)
    quad = (field * solved).sum((-1, -2))
    const = dim / 2.0 - dim / 2.0 * math.log(dim / radius**2)
    return radius**2 * multipliers.sum(-1) - 0.5 * dim * logdet + 0.5 * beta**2 * quad - n * const


def saddle_gradient_hessian(
    multipliers: Tensor, couplings: Tensor, field: Tensor, beta: Tensor, radius: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(∇Φ, ∇²Φ, m) in closed form at the multipliers t (see the module docstring)."""
    dim = field.shape[-1]
    chol, _ = torch.linalg.cholesky_ex(_precision(couplings, multipliers, beta))
    green = torch.cholesky_inverse(chol)
    mag = beta[..., None, None] * green @ field
    grad = radius**2 - dim * green.diagonal(dim1=-2, dim2=-1) - (mag * mag).sum(-1)
    hess = 2.0 * dim * green**2 + 4.0 * green * (mag @ mag.transpose(-1, -2))
    return grad, hess, mag


def _newton_step(hess: Tensor, grad: Tensor) -> Tensor:
    """H⁻¹∇Φ by a Cholesky solve (H = ∇²Φ is positive definite: Schur products of the positive
    definite G with G and with m·mᵀ); half the work of an LU solve, and multi-threaded batched
    LU fails for N ≥ 256 in some MKL builds."""
    chol, info = torch.linalg.cholesky_ex(hess)
    if bool((info != 0).any()):  # not numerically positive definite: the general solve
        return torch.linalg.solve(hess, grad[..., None])[..., 0]
    return torch.cholesky_solve(grad[..., None], chol)[..., 0]


def _initial_multipliers(couplings: Tensor, field: Tensor, beta: Tensor, radius: float) -> Tensor:
    """Free-spin saddle, raised where needed so that V = 2 diag(t) − βJ is strictly diagonally
    dominant (hence positive definite, Gershgorin)."""
    dim = field.shape[-1]
    b = beta[..., None]
    free = (
        dim
        / (4.0 * radius**2)
        * (1.0 + torch.sqrt(1.0 + 4.0 * radius**2 * b**2 * (field * field).sum(-1) / dim**2))
    )
    return torch.maximum(free, 0.505 * b * couplings.abs().sum(-1))


def _damped_newton(couplings: Tensor, field: Tensor, beta: Tensor, radius: float):
    dim = field.shape[-1]

    def step(multipliers: Tensor) -> Tensor:
        grad, hess, _ = saddle_gradient_hessian(multipliers, couplings, field, beta, radius)
        delta = _newton_step(hess, grad)
        # Φ = (D/2)·(self-concordant barrier) + convex terms: the decrement in the barrier's own
        # scale is λ/√(D/2); damped far away, pure Newton once it is < 1/4.
        decrement = torch.sqrt((grad * delta).sum(-1, keepdim=True).clamp_min(0.0) / (dim / 2.0))
        scale = torch.where(decrement > 0.25, 1.0 / (1.0 + decrement), torch.ones_like(decrement))
        return multipliers - scale * delta

    return step


def solve_saddle(
    couplings: Tensor,
    field: Tensor,
    beta: Tensor,
    radius: float,
    tol: float = 1e-10,
    max_iter: int = 100,
    warn: bool = True,
) -> FixedPointResult:
    """Multipliers t* minimising Φ (no autograd); batch = the leading dims of ``beta``.

    ``couplings``, ``field`` and ``beta`` must already be broadcast to a common batch shape.
    """
    check_positive_int(max_iter, "max_iter")
    check_symmetric(couplings.detach(), "couplings")
    with torch.no_grad():
        couplings, field, beta = couplings.detach(), field.detach(), beta.detach()
        return fixed_point(
            _damped_newton(couplings, field, beta, radius),
            _initial_multipliers(couplings, field, beta, radius),
            method="picard",
            tol=tol,
            max_iter=max_iter,
            batch_dims=beta.ndim,
            check_every=2,
            warn=warn,
        )


def saddle_log_partition(
    couplings: Tensor,
    field: Tensor,
    beta: Tensor,
    radius: float,
    multipliers: Tensor | None = None,
) -> Tensor:
    """Steepest-descent ln Z, differentiable to second order in couplings, field and beta.

    ``multipliers`` is the detached saddle t* (solved here when ``None``); one undamped Newton
    step t₁ = t* − H⁻¹∇Φ re-attaches it, so dt₁/dp is the implicit-function derivative.
    """
    if multipliers is None:
        multipliers = solve_saddle(couplings, field, beta, radius).solution
    t = multipliers.detach()
    grad, hess, _ = saddle_gradient_hessian(t, couplings, field, beta, radius)
    # The Hessian's own derivatives multiply ∇Φ(t*) = 0, so it enters detached.
    t1 = t - _newton_step(hess.detach(), grad)
    return saddle_potential(t1, couplings, field, beta, radius)


def saddle_magnetization(
    couplings: Tensor, field: Tensor, beta: Tensor, radius: float, multipliers: Tensor
) -> Tensor:
    """Closed-form m = β V(t*)⁻¹ h at the saddle (the envelope-theorem route)."""
    return saddle_gradient_hessian(multipliers, couplings, field, beta, radius)[2]


@register_method("saddle", VectorSpinModel)
def saddle_thermodynamics(
    model: VectorSpinModel,
    tol: float = 1e-10,
    max_iter: int = 100,
    susceptibility: bool = True,
) -> Thermodynamics:
    """Steepest-descent thermodynamics of a (symmetric) vector-spin model; see the module docstring.

    Every observable is an autodiff derivative of the saddle ln Z. ``extras`` holds the
    multipliers t* and the solver residual.
    """
    couplings = model.coupling_matrix
    check_symmetric(couplings, "couplings")
    batch = model.batch_shape
    couplings = couplings.expand(*batch, *couplings.shape[-2:])
    field, beta = model.expanded_field(), model.expanded_beta()
    result = solve_saddle(couplings, field, beta, model.radius, tol, max_iter)
    t_star = result.solution

    def log_partition(field_: Tensor, beta_: Tensor) -> Tensor:
        return saddle_log_partition(couplings, field_, beta_, model.radius, t_star)

    return thermodynamics_from_log_partition(
        log_partition,
        model,
        "saddle",
        susceptibility=susceptibility,
        converged=result.converged,
        iterations=result.iterations,
        extras={"residual": result.residual, "multipliers": t_star},
    )
