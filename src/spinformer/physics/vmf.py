r"""The single vector spin: a von Mises–Fisher spin on the sphere of radius R in D dimensions.

Every single-vector-spin quantity of the library lives here, once: mean-field methods, the
dynamical mean field and the transformer modules import these functions rather than re-typing
the formulas.

A spin σ with |σ| = R in an effective field θ at inverse temperature β has the density
∝ e^{βθ·σ} on the sphere (uniform probability measure), i.e. von Mises–Fisher with concentration
κ = βR|θ| about θ̂ and Bessel order ν = D/2 − 1 (:func:`bessel_order`). Its log-normalizer,
mean and covariance are (:func:`site_moments`, :func:`mean`, :func:`covariance`)

.. math::

    \ln z(\theta) = \ln\big[\Gamma(\nu+1)(2/\kappa)^{\nu} I_\nu(\kappa)\big],\qquad
    m(\theta) = R\,A_D(\kappa)\,\hat\theta = \beta R^2 q\,\theta,\qquad
    C = R^2 A'(\kappa)\,\hat\theta\hat\theta^{\mathsf T} + R^2 q\,(1 - \hat\theta\hat\theta^{\mathsf T}),

with A_D = I_{ν+1}/I_ν and q = A_D/κ, all evaluated as smooth functions of κ² by
:func:`spinformer.physics.special.vmf_moments` (stable at large order and argument).

The leading uniform (Debye) asymptotics A_D(κ) ≈ κ/(ν + √(ν² + κ²)) with the radius convention
of spin-model transformers, R² = ν (:func:`transformer_radius`), turn the mean into the
parameter-free large-D response (Bal, "Spin-model transformers", 2023)

.. math::

    \varphi(\theta) = \frac{\beta\theta}{1 + \sqrt{1 + \beta^2|\theta|^2/R^2}},\qquad
    \varphi^{-1}(m) = \frac{2R^2\,m}{\beta\,(R^2 - |m|^2)}\quad(|m| < R),

(:func:`phi`, :func:`phi_inverse`) whose relative error against the Bessel form falls like 1/D.
The covariance consistent with φ, C = β⁻¹∂φ/∂θ, written in terms of m alone (s = |m|), is
C = b 1 + w m mᵀ with tangential variance b = (R² − s²)/(2R²) and w = −(R² − s²)/(R²(R² + s²))
(:func:`large_d_covariance`).

Exact samples come from Wood's rejection algorithm (Wood, "Simulation of the von Mises Fisher
distribution", Commun. Stat. Simul. Comput. 23, 157, 1994), :func:`von_mises_fisher`, which the
Monte Carlo heat bath uses for vector spins.

The lower-case functions (:func:`phi`, :func:`mean`, ...) are the kernels: they trust their
inputs, and ``beta`` must already broadcast against the field (e.g. shape (..., 1)). The
``*_response`` and :func:`vector_covariance` entry points validate their arguments.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from spinformer._validation import as_tensor, check_beta, check_finite
from spinformer.physics.special import vmf_moments

__all__ = [
    "bessel_order",
    "bessel_response",
    "covariance",
    "large_d_covariance",
    "large_d_response",
    "log_normalizer_and_mean",
    "mean",
    "phi",
    "phi_fused",
    "phi_gain",
    "phi_inverse",
    "phi_sum",
    "phi_sum_vjp",
    "phi_terms",
    "site_moments",
    "transformer_radius",
    "vector_covariance",
    "von_mises_fisher",
]


def bessel_order(dim: int) -> float:
    """ν = D/2 − 1, the Bessel order of a spin in D dimensions."""
    return dim / 2.0 - 1.0


def transformer_radius(dim: int) -> float:
    """R = √(D/2 − 1), the radius that makes the large-D response parameter-free (needs D > 2)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 2:
        raise ValueError(
            f"dim (the spin/head dimension D) must be an integer > 2 for the radius convention "
            f"R^2 = D/2 - 1, got {dim!r}"
        )
    return math.sqrt(bessel_order(dim))


# -- kernels (inputs trusted; beta broadcastable against theta) -----------------------------------


def site_moments(
    theta: Tensor, beta: Tensor | float, radius: float, keepdim: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(ln z, q, A', q') of spins in fields θ (..., D) at κ² = β²R²|θ|² (see ``vmf_moments``).

    ``beta`` broadcasts against ``theta.shape[:-1]`` (or against ``theta`` with ``keepdim``,
    which keeps the reduced component axis as size one).
    """
    nu = bessel_order(theta.shape[-1])
    x2 = (beta * radius) ** 2 * (theta * theta).sum(-1, keepdim=keepdim)
    return vmf_moments(nu, x2)


def log_normalizer_and_mean(
    theta: Tensor, beta: Tensor | float, radius: float
) -> tuple[Tensor, Tensor]:
    """(ln z(θ) (...), m(θ) (..., D)): the log-normalizer and the exact mean βR² q(κ) θ.

    ``beta`` broadcasts against θ (e.g. shape (..., 1)); one Bessel evaluation serves both.
    """
    log_z, q, _, _ = site_moments(theta, beta, radius, keepdim=True)
    return log_z[..., 0], beta * radius**2 * q * theta


def mean(theta: Tensor, beta: Tensor | float, radius: float) -> Tensor:
    """m(θ) = R A_D(βR|θ|) θ̂ = βR² q(κ) θ, the exact mean (``beta`` broadcast against θ)."""
    return log_normalizer_and_mean(theta, beta, radius)[1]


def covariance(theta: Tensor, beta: Tensor | float, radius: float) -> tuple[Tensor, Tensor, Tensor]:
    """(a, b, e) with C = b·1 + e θθᵀ and a = b + e|θ|² the radial variance (``beta`` (...)).

    a = R²A'(κ), b = R²q(κ), and e = (a − b)/|θ|² = 2β²R⁴ q'(κ²) is smooth at θ = 0 (q' = dq/dκ²).
    """
    nu = bessel_order(theta.shape[-1])
    scale = (beta * radius) ** 2
    _, q, slope, q_slope = vmf_moments(nu, scale * (theta * theta).sum(-1))
    r2 = radius**2
    return r2 * slope, r2 * q, 2.0 * scale * r2 * q_slope


def _root(norm2: Tensor, beta: Tensor | float, radius: float) -> Tensor:
    """u = √(1 + β²|θ|²/R²) from |θ|² (the one body of the large-D response's root)."""
    return torch.sqrt(1.0 + beta * beta * norm2 / radius**2)


def phi_terms(theta: Tensor, beta: Tensor | float, radius: float) -> tuple[Tensor, Tensor, Tensor]:
    """(φ(θ), |θ|², u) with u = √(1 + β²|θ|²/R²), so φ = βθ/(1 + u) (``beta`` broadcast)."""
    norm2 = (theta * theta).sum(-1, keepdim=True)
    u = _root(norm2, beta, radius)
    return theta * (beta * torch.reciprocal(1.0 + u)), norm2, u


def phi_gain(theta: Tensor, beta: Tensor | float, radius: float) -> tuple[Tensor, Tensor]:
    """(g, u) per site (..., 1) with φ(θ) = g θ, g = β/(1 + u) (``beta`` broadcast): the
    response's scale from one pass over θ (its norm, no full-size |θ|² products), for iterations
    without autograd."""
    norm = torch.linalg.vector_norm(theta, dim=-1, keepdim=True)
    u = _root(norm.square_(), beta, radius)
    return beta / (1.0 + u), u


def phi(theta: Tensor, beta: Tensor | float, radius: float) -> Tensor:
    """φ(θ) = βθ / (1 + √(1 + β²|θ|²/R²)), the large-D response (``beta`` broadcast against θ)."""
    return phi_terms(theta, beta, radius)[0]


class _Phi(torch.autograd.Function):
    """φ(θ) of a summed local field θ = Σ fields [+ φ⁻¹(stream)], with the vector-Jacobian
    products in closed form (fewer kernels and saved tensors than autograd's chain through the
    sums, the norms, the square root and the divisions).

    φ: ∂φ/∂θ = g 1 + (g'/r) θθᵀ with g = β/(1 + u), g'/r = −β³/(R² u (1 + u)²), and
    ∂φ/∂β = θ/(u (1 + u)).
    φ⁻¹(x) = a x with a = 2R²/(β s), s = R² − |x|² (floored): ∂/∂x = a 1 + (2a/s) x xᵀ (zero
    second term where the floor holds), ∂/∂β = −φ⁻¹(x)/β.
    """

    @staticmethod
    def forward(ctx, beta: Tensor, radius: float, stream: Tensor | None, *fields: Tensor) -> Tensor:  # type: ignore[override]
        value, saved = phi_sum(beta, radius, stream, *fields)
        ctx.save_for_backward(beta, stream, *saved)
        ctx.radius, ctx.fields = radius, len(fields)
        return value

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        beta, stream, *saved = ctx.saved_tensors
        grad_theta, grad_stream, grad_beta = phi_sum_vjp(
            grad, beta, ctx.radius, stream, saved, ctx.needs_input_grad[2]
        )
        grad_beta = grad_beta.sum_to_size(beta.shape) if ctx.needs_input_grad[0] else None
        return (grad_beta, None, grad_stream, *(grad_theta,) * ctx.fields)


def phi_sum(
    beta: Tensor, radius: float, stream: Tensor | None, *fields: Tensor
) -> tuple[Tensor, list[Tensor | None]]:
    """φ(Σ fields + φ⁻¹(stream)) and what :func:`phi_sum_vjp` needs, without autograd: the
    forward of :func:`phi_fused` (``beta`` broadcast against the fields)."""
    theta = fields[0] + fields[1] if len(fields) > 1 else fields[0]
    for field in fields[2:]:
        theta.add_(field)  # a fresh sum: accumulate in place
    scale = radial = None
    if stream is not None:
        scale, gap, free = phi_inverse(stream, beta, radius, terms=True)  # φ⁻¹(x) = scale·x
        if len(fields) > 1:  # fresh: accumulate in place, without forming φ⁻¹(x)
            theta = theta.addcmul_(stream, scale)
        else:
            theta = torch.addcmul(theta, stream, scale)
        # ∂scale/∂|x|² = scale/s, zero where the floor holds
        radial = torch.where(free, scale / gap, 0.0)
    value, _, u = phi_terms(theta, beta, radius)
    return value, [theta, u, scale, radial]


def phi_sum_vjp(
    grad: Tensor,
    beta: Tensor,
    radius: float,
    stream: Tensor | None,
    saved: list[Tensor | None],
    stream_grad: bool = True,
    out: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The vector-Jacobian products of :func:`phi_sum` in closed form (see :class:`_Phi`):
    (∂L/∂θ, the gradient of every field, into ``out`` if given; ∂L/∂stream, or ``None``
    without a stream or ``stream_grad``; ∂L/∂β per site, not yet summed to β's shape)."""
    theta, u, scale, radial = saved
    one_u = 1.0 + u
    # with β²|θ|²/R² = u² − 1: ∂φ/∂β = θ w and g'/r = −g w β²/R², w = 1/(u(1 + u))
    w = torch.reciprocal(u * one_u)
    g = beta / one_u
    # each full-size product goes into a fresh buffer that is then reused in place
    product = theta * grad
    along = product.sum(-1, keepdim=True)
    grad_beta = w * along  # per site; (g'/r) θ·grad below shares w·(θ·grad)
    coefficient = g * grad_beta * (beta * beta / -(radius**2))
    grad_theta = torch.mul(grad, g, out=product if out is None else out)
    grad_theta.addcmul_(theta, coefficient)
    grad_stream = None
    if stream is not None:
        product = stream * grad_theta
        across = product.sum(-1, keepdim=True)
        if stream_grad:
            grad_stream = torch.mul(grad_theta, scale, out=product)
            grad_stream.addcmul_(stream, 2.0 * radial * across)
        grad_beta = grad_beta - scale / beta * across
    return grad_theta, grad_stream, grad_beta


def phi_fused(
    theta: Tensor, beta: Tensor, radius: float, *fields: Tensor, stream: Tensor | None = None
) -> Tensor:
    """φ(θ + Σ fields + φ⁻¹(stream)) (:func:`phi`, :func:`phi_inverse`) with a closed-form
    backward, for training: θ and the fields (..., D) (broadcasting to θ's shape), ``beta`` a
    tensor broadcastable against θ[..., :1], ``stream`` magnetizations |x| < R (..., D) whose
    conjugate field φ⁻¹(x) joins the local field."""
    return _Phi.apply(beta, radius, stream, theta, *fields)


def phi_inverse(
    m: Tensor, beta: Tensor | float, radius: float, terms: bool = False
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    """θ = φ⁻¹(m) = 2R² m / (β (R² − |m|²)) for |m| < R (closed form of the inverse).

    A magnetization saturated to |m| = R by rounding keeps a finite field: R² − |m|² is floored
    at R²·eps of the dtype (≈ 1e-7 relative in float32). ``terms=True`` returns, instead of θ,
    (the factor a = 2R²/(β s) with θ = a m, the floored s = R² − |m|², where s is above the
    floor), per site (..., 1), for a fused sum and a closed-form derivative.
    """
    r2 = radius**2
    norm2 = (m * m).sum(-1, keepdim=True)
    floor = r2 * torch.finfo(m.dtype).eps
    gap = (r2 - norm2).clamp_min(floor)
    scale = 2.0 * r2 / (beta * gap)
    return (scale, gap, gap > floor) if terms else m * scale


def large_d_covariance(m: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """(b, w) with β⁻¹∂φ/∂θ = b·1 + w m mᵀ at m = φ(θ), m (..., D) → b, w (...).

    b = (R² − |m|²)/(2R²) is the variance of each tangential component and w|m|² =
    −|m|²(R² − |m|²)/(R²(R² + |m|²)) the radial minus the tangential variance.
    """
    r2 = radius**2
    s2 = (m * m).sum(-1)
    return (r2 - s2) / (2.0 * r2), -(r2 - s2) / (r2 * (r2 + s2))


# -- validated entry points --------------------------------------------------------------------


def _checked(theta: Tensor, beta: Tensor | float, radius: float) -> Tensor | float:
    """Validate a field, β and R; return β broadcastable against θ (a trailing unit axis)."""
    check_finite(theta, "theta")
    beta = as_tensor(beta, "beta", dtype=theta.dtype, device=theta.device)
    check_beta(beta)
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius!r}")
    return beta[..., None] if beta.ndim else beta


def large_d_response(theta: Tensor, beta: Tensor | float, radius: float) -> Tensor:
    """φ(θ) = βθ / (1 + √(1 + β²|θ|²/R²)) for effective fields θ (..., D).

    ``beta`` broadcasts against ``theta.shape[:-1]``. The map is smooth everywhere (slope β/2
    at θ = 0) and |φ| < R.
    """
    return phi(theta, _checked(theta, beta, radius), radius)


def bessel_response(theta: Tensor, beta: Tensor | float, radius: float) -> Tensor:
    """Exact mean of a von Mises–Fisher spin: R A_D(βR|θ|) θ̂ = βR² q(κ) θ, θ (..., D).

    Uses the stable Bessel ratio of :mod:`spinformer.physics.special` (finite at θ = 0).
    """
    return mean(theta, _checked(theta, beta, radius), radius)


def vector_covariance(
    theta: Tensor, beta: Tensor | float, radius: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Covariance C = a θ̂θ̂ᵀ + b(1 − θ̂θ̂ᵀ) of a von Mises–Fisher spin: returns (a, b, θ̂).

    a = R²A'(κ) (radial variance, A' = 1 − A² − (D−1)A/κ, evaluated without cancellation by
    :func:`~spinformer.physics.special.vmf_moments`) and b = R²A/κ (each tangential
    direction); a = b = R²/D at θ = 0. Shapes: a, b (...), θ̂ (..., D).
    """
    beta = as_tensor(beta, "beta", dtype=theta.dtype, device=theta.device)
    radial, tangential, _ = covariance(theta, beta, radius)
    norm = theta.norm(dim=-1)
    direction = theta / norm.clamp_min(torch.finfo(theta.dtype).tiny)[..., None]
    return radial, tangential, direction


def von_mises_fisher(
    mean_direction: Tensor,
    kappa: Tensor,
    generator: torch.Generator | None = None,
    candidates: int = 4,
) -> Tensor:
    r"""Unit vectors from the von Mises–Fisher density :math:`\propto e^{\kappa\,\mu\cdot x}` on S^{D−1}.

    Wood's algorithm (1994): the cosine :math:`w = \mu\cdot x` is drawn by rejection from a
    Beta-based envelope, then :math:`x = w\mu + \sqrt{1-w^2}\,v` with :math:`v` uniform on the
    sphere orthogonal to :math:`\mu`. The Beta((D−1)/2, (D−1)/2) variate is (1 + t)/2 with t the
    first coordinate of a uniform point on S^{D−1}, so only Gaussian and uniform draws are used
    (and ``generator`` makes them reproducible). ``candidates`` proposals are drawn per round in
    one batch; rounds repeat only for the rare entries with none accepted.

    Args:
        mean_direction: (..., D) with D ≥ 2; normalised here (a zero vector means κ = 0 and
            gives the uniform distribution).
        kappa: (...) concentrations ≥ 0.
    """
    dim = mean_direction.shape[-1]
    if dim < 2:
        raise ValueError(f"mean_direction must have a last dimension D >= 2, got {dim}")
    dtype, device = mean_direction.dtype, mean_direction.device
    kappa = kappa.to(dtype)
    if bool((kappa < 0).any()):
        raise ValueError("kappa must be non-negative")
    norm = mean_direction.norm(dim=-1, keepdim=True)
    axis = torch.zeros_like(mean_direction)
    axis[..., 0] = 1.0
    mu = torch.where(norm > 0, mean_direction / norm.clamp_min(torch.finfo(dtype).tiny), axis)
    d1 = dim - 1.0
    b = d1 / (2.0 * kappa + torch.sqrt(4.0 * kappa**2 + d1**2))
    x0 = (1.0 - b) / (1.0 + b)
    c = kappa * x0 + d1 * torch.log1p(-(x0**2))
    shape = kappa.shape
    w = torch.zeros(shape, dtype=dtype, device=device)
    pending = torch.ones(shape, dtype=torch.bool, device=device)
    while True:
        g = torch.randn(candidates, *shape, dim, dtype=dtype, device=device, generator=generator)
        z = 0.5 * (1.0 + g[..., 0] / g.norm(dim=-1))
        u = torch.rand(candidates, *shape, dtype=dtype, device=device, generator=generator)
        w_c = (1.0 - (1.0 + b) * z) / (1.0 - (1.0 - b) * z)
        accept = kappa * w_c + d1 * torch.log1p(-x0 * w_c) - c >= torch.log(u)
        first = accept.to(torch.int8).argmax(dim=0, keepdim=True)
        found = accept.any(dim=0)
        take = pending & found
        w = torch.where(take, w_c.gather(0, first).squeeze(0), w)
        pending = pending & ~found
        if not bool(pending.any()):  # one sync per round; almost always a single round
            break
    g = torch.randn(*shape, dim, dtype=dtype, device=device, generator=generator)
    v = g - (g * mu).sum(-1, keepdim=True) * mu
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    return w[..., None] * mu + torch.sqrt((1.0 - w**2).clamp_min(0.0))[..., None] * v
