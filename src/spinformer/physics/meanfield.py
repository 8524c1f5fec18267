r"""Mean-field responses and the naive mean-field and TAP free energies (Ising and vector spins).

**Single-site responses.** A vector spin on the sphere of radius R in D dimensions in an
effective field θ is von Mises–Fisher; its mean is exactly (``bessel_response``)

.. math::

    m(\theta) = R\,A_D(\beta R|\theta|)\,\hat\theta = \beta R^2 q(\kappa)\,\theta,\qquad
    A_D = I_{D/2}/I_{D/2-1},\ \kappa = \beta R|\theta|,\ q = A_D/\kappa .

The leading uniform (Debye) asymptotics A_D(κ) ≈ κ/(ν + √(ν² + κ²)), ν = D/2 − 1, with the
spin-model-transformer radius convention R² = ν turns it into the parameter-free large-D
response (``large_d_response``; Bal, "Spin-model transformers", 2023)

.. math::

    \varphi(\theta) = \frac{\beta\theta}{1 + \sqrt{1 + \beta^2|\theta|^2/R^2}},\qquad R^2 = D/2 - 1,

whose relative error against the Bessel form falls like 1/D. Ising spins respond with
m = tanh(βθ).

**Free energies.** Naive mean field and TAP (Thouless, Anderson & Palmer 1977; Plefka 1982) are
stationary points of a variational ln Z written here in the effective fields θ (so that no
inverse Bessel ratio is needed), with m = m(θ) the single-site response and C(θ) its covariance:

.. math::

    \Phi(\theta) = \sum_i\big[\ln z(\theta_i) - \beta\,\theta_i\cdot m_i\big]
      + \beta\Big(\tfrac12\sum_{ij}J_{ij}\,m_i\cdot m_j + \sum_i h_i\cdot m_i\Big)
      + \underbrace{\tfrac{\beta^2}{4}\sum_{i\ne j}J_{ij}^2\,\operatorname{tr}(C_iC_j)}_{\text{TAP only}} .

ln z is ln 2cosh βθ (Ising) or the normalized log Bessel function (vector, uniform probability
measure on the sphere, as in ``method="exact"``). Stationarity gives θ = h + Jm (naive) and, for
Ising TAP, the textbook θ_i = h_i + Σ_j J_ij m_j − β m_i Σ_j J_ij²(1 − m_j²). For vector TAP the
reaction term is θ_i ← h_i + Σ_j J_ij m_j + β⁻² C_i⁻¹ ∂O/∂θ_i (O the Onsager term), because
∂m_i/∂θ_i = βC_i. The fixed point is solved by :mod:`spinformer.solvers`; every observable then
follows from Φ by autodiff (:mod:`spinformer.physics._variational`). Plefka's expansion makes
naive mean field exact to first order in J and TAP to second: at couplings scaled by ε the
magnetization errors scale as ε² and ε³.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from spinformer._validation import as_tensor, check_beta, check_finite, check_positive_int
from spinformer.physics._variational import stationary_log_partition
from spinformer.physics.models import IsingModel, VectorSpinModel
from spinformer.physics.special import bessel_ratio, log_bessel_iv_normalized
from spinformer.physics.thermo import (
    Thermodynamics,
    register_method,
    thermodynamics_from_log_partition,
)
from spinformer.solvers import fixed_point

__all__ = [
    "bessel_response",
    "ising_response",
    "large_d_response",
    "mean_field_thermodynamics",
    "transformer_radius",
    "vector_covariance",
]


def transformer_radius(dim: int) -> float:
    """R = √(D/2 − 1), the radius that makes the large-D response parameter-free (needs D > 2)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 2:
        raise ValueError(
            f"dim (the spin/head dimension D) must be an integer > 2 for the radius convention "
            f"R^2 = D/2 - 1, got {dim!r}"
        )
    return math.sqrt(dim / 2.0 - 1.0)


def _beta_tensor(beta: Tensor | float, like: Tensor) -> Tensor:
    beta = as_tensor(beta, "beta", dtype=like.dtype, device=like.device)
    check_beta(beta)
    return beta


def large_d_response(theta: Tensor, beta: Tensor | float, radius: float) -> Tensor:
    """φ(θ) = βθ / (1 + √(1 + β²|θ|²/R²)) for effective fields θ (..., D).

    ``beta`` broadcasts against ``theta.shape[:-1]``. The map is smooth everywhere (slope β/2
    at θ = 0) and |φ| < R.
    """
    check_finite(theta, "theta")
    beta = _beta_tensor(beta, theta)
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius!r}")
    return _large_d(theta, beta[..., None] if beta.ndim else beta, radius)


def _large_d(theta: Tensor, beta: Tensor | float, radius: float) -> Tensor:
    """Unchecked φ; ``beta`` already broadcastable against ``theta``."""
    norm2 = (theta * theta).sum(-1, keepdim=True)
    return beta * theta / (1.0 + torch.sqrt(1.0 + beta * beta * norm2 / radius**2))


def _large_d_inverse(m: Tensor, beta: Tensor | float, radius: float) -> Tensor:
    """θ = φ⁻¹(m) = 2R² m / (β (R² − |m|²)) for |m| < R (closed form of the inverse)."""
    norm2 = (m * m).sum(-1, keepdim=True)
    return 2.0 * radius**2 * m / (beta * (radius**2 - norm2))


def bessel_response(theta: Tensor, beta: Tensor | float, radius: float) -> Tensor:
    """Exact mean of a von Mises–Fisher spin: R A_D(βR|θ|) θ̂ = βR² q(κ) θ, θ (..., D).

    Uses the stable Bessel ratio of :mod:`spinformer.physics.special` (finite at θ = 0).
    """
    check_finite(theta, "theta")
    beta = _beta_tensor(beta, theta)
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius!r}")
    return _bessel(theta, beta[..., None] if beta.ndim else beta, radius)


def _bessel(theta: Tensor, beta: Tensor | float, radius: float) -> Tensor:
    nu = theta.shape[-1] / 2.0 - 1.0
    kappa = beta * radius * theta.norm(dim=-1, keepdim=True)
    _, q = bessel_ratio(nu, kappa, return_over_x=True)
    return beta * radius**2 * q * theta


def ising_response(theta: Tensor, beta: Tensor | float) -> Tensor:
    """m = tanh(βθ), the mean of an Ising spin in the effective field θ."""
    check_finite(theta, "theta")
    beta = _beta_tensor(beta, theta)
    return torch.tanh(beta * theta)


def vector_covariance(
    theta: Tensor, beta: Tensor | float, radius: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Covariance C = a θ̂θ̂ᵀ + b(1 − θ̂θ̂ᵀ) of a von Mises–Fisher spin: returns (a, b, θ̂).

    a = R²A'(κ) (radial variance, A' = 1 − A² − (D−1)A/κ) and b = R²A/κ (each tangential
    direction); a = b = R²/D at θ = 0. Shapes: a, b (...), θ̂ (..., D).
    """
    beta = as_tensor(beta, "beta", dtype=theta.dtype, device=theta.device)
    dim = theta.shape[-1]
    norm = theta.norm(dim=-1)
    kappa = beta * radius * norm
    ratio, over = bessel_ratio(dim / 2.0 - 1.0, kappa, return_over_x=True)
    radial = radius**2 * (1.0 - ratio**2 - (dim - 1) * over)
    tangential = radius**2 * over
    direction = theta / norm.clamp_min(1e-300)[..., None]
    return radial, tangential, direction


# -- variational potentials Φ(θ; h, β) -------------------------------------------------------


def _ising_potential(tap: bool) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
    def potential(theta: Tensor, field: Tensor, beta: Tensor, couplings: Tensor) -> Tensor:
        b = beta[..., None]
        x = b * theta
        m = torch.tanh(x)
        log_z = (torch.logaddexp(x, -x)).sum(-1)
        phi = log_z - (x * m).sum(-1)
        phi = phi + beta * (0.5 * torch.einsum("...i,...ij,...j->...", m, couplings, m))
        phi = phi + beta * (field * m).sum(-1)
        if tap:
            var = 1.0 - m * m
            squared = couplings**2
            phi = phi + 0.25 * beta**2 * torch.einsum("...i,...ij,...j->...", var, squared, var)
        return phi

    return potential


def _onsager_vector(theta: Tensor, beta: Tensor, radius: float, squared: Tensor) -> Tensor:
    """(β²/4) Σ_ij J_ij² tr(C_i C_j) with vMF covariances (J_ii = 0), shape beta.shape."""
    dim = theta.shape[-1]
    a, b, direction = vector_covariance(theta, beta[..., None], radius)
    cos2 = (direction @ direction.transpose(-1, -2)) ** 2
    d = a - b
    trace = (
        dim * b[..., :, None] * b[..., None, :]
        + d[..., :, None] * b[..., None, :]
        + b[..., :, None] * d[..., None, :]
        + d[..., :, None] * d[..., None, :] * cos2
    )
    return 0.25 * beta**2 * (squared * trace).sum((-1, -2))


def _vector_potential(
    radius: float, tap: bool
) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
    def potential(theta: Tensor, field: Tensor, beta: Tensor, couplings: Tensor) -> Tensor:
        nu = theta.shape[-1] / 2.0 - 1.0
        b = beta[..., None, None]
        m = _bessel(theta, b, radius)
        kappa = beta[..., None] * radius * theta.norm(dim=-1)
        phi = log_bessel_iv_normalized(nu, kappa).sum(-1) - beta * (theta * m).sum((-1, -2))
        phi = phi + 0.5 * beta * torch.einsum("...id,...ij,...jd->...", m, couplings, m)
        phi = phi + beta * (field * m).sum((-1, -2))
        if tap:
            phi = phi + _onsager_vector(theta, beta, radius, couplings**2)
        return phi

    return potential


# -- fixed-point maps --------------------------------------------------------------------------


def _ising_update(couplings: Tensor, field: Tensor, beta: Tensor, tap: bool):
    squared = couplings**2
    b = beta[..., None]

    def update(theta: Tensor) -> Tensor:
        m = torch.tanh(b * theta)
        new = field + torch.einsum("...ij,...j->...i", couplings, m)
        if tap:
            new = new - b * m * torch.einsum("...ij,...j->...i", squared, 1.0 - m * m)
        return new

    return update


def _vector_update(couplings: Tensor, field: Tensor, beta: Tensor, radius: float, tap: bool):
    squared = couplings**2
    b = beta[..., None, None]

    def update(theta: Tensor) -> Tensor:
        m = _bessel(theta, b, radius)
        new = field + torch.einsum("...ij,...jd->...id", couplings, m)
        if tap:
            with torch.enable_grad():
                leaf = theta.detach().requires_grad_(True)
                onsager = _onsager_vector(leaf, beta, radius, squared)
                (grad,) = torch.autograd.grad(onsager.sum(), leaf)
            a, t, direction = vector_covariance(theta, beta[..., None], radius)
            along = (direction * grad).sum(-1, keepdim=True)
            # C⁻¹ g = g/b + (1/a − 1/b) θ̂ (θ̂·g)
            inverse = grad / t[..., None] + (1.0 / a - 1.0 / t)[..., None] * direction * along
            new = new + inverse / b**2
        return new

    return update


def mean_field_thermodynamics(
    model: IsingModel | VectorSpinModel,
    tap: bool = False,
    tol: float = 1e-12,
    max_iter: int = 1000,
    solver: str = "anderson",
    damping: float = 1.0,
    susceptibility: bool = True,
) -> Thermodynamics:
    """Naive mean-field (``tap=False``) or TAP thermodynamics of an equilibrium spin model.

    The self-consistent effective fields θ are solved by :func:`spinformer.solvers.fixed_point`
    (starting from θ = h); ln Z is the variational Φ at the solution, and m, U, C, χ are its
    autodiff derivatives (exact derivatives of the approximate ln Z). The result carries the
    per-sample ``converged``/``iterations`` flags; ``extras`` holds ``residual`` and
    ``effective_field``.
    """
    name = "tap" if tap else "mean_field"
    check_positive_int(max_iter, "max_iter")
    couplings = model.coupling_matrix
    field = model.expanded_field()
    beta = model.expanded_beta()
    couplings = couplings.expand(*model.batch_shape, *couplings.shape[-2:])
    if isinstance(model, VectorSpinModel):
        potential = _vector_potential(model.radius, tap)
        update = _vector_update(couplings, field, beta, model.radius, tap)
    else:
        potential = _ising_potential(tap)
        update = _ising_update(couplings, field, beta, tap)
    with torch.no_grad():
        result = fixed_point(
            update,
            field.detach().clone(),
            method=solver,
            tol=tol,
            max_iter=max_iter,
            damping=damping,
            batch_dims=len(model.batch_shape),
        )
    theta_star = result.solution.detach()

    def log_partition(field_: Tensor, beta_: Tensor) -> Tensor:
        return stationary_log_partition(potential, theta_star, field_, beta_, couplings)

    return thermodynamics_from_log_partition(
        log_partition,
        model,
        name,
        susceptibility=susceptibility,
        converged=result.converged,
        iterations=result.iterations,
        extras={"residual": result.residual, "effective_field": theta_star},
    )


@register_method("mean_field", IsingModel, VectorSpinModel)
def _mean_field(model: IsingModel | VectorSpinModel, **options) -> Thermodynamics:
    """Naive mean field: θ = h + Jm, m = m(θ) (see :func:`mean_field_thermodynamics`)."""
    return mean_field_thermodynamics(model, tap=False, **options)


@register_method("tap", IsingModel, VectorSpinModel)
def _tap(model: IsingModel | VectorSpinModel, **options) -> Thermodynamics:
    """TAP: mean field with the Onsager reaction term (see :func:`mean_field_thermodynamics`)."""
    return mean_field_thermodynamics(model, tap=True, **options)
