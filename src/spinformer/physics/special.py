r"""Modified Bessel functions for vector spins: stable at large order and argument, in torch.

A free spin on the sphere of radius R in D dimensions in a field h has the von Mises–Fisher
partition function (uniform probability measure on the sphere)

.. math::

    Z(\kappa) = \Gamma(\nu+1)\,(2/\kappa)^{\nu} I_\nu(\kappa), \qquad \nu = D/2 - 1,\ \kappa = \beta R |h|,

and its response is the Bessel ratio :math:`A_D(\kappa) = I_{\nu+1}(\kappa)/I_\nu(\kappa)`
(m = R A ĥ). Transformer widths make ν large (D = 64 … 4096) while κ ranges over many decades,
so neither the power series nor the large-argument expansion is usable alone.

Method. At a high order μ = ν + K ≥ 100 the uniform (Debye) expansion
(Abramowitz & Stegun 9.3.7, terms u₀…u₄) is accurate to ~1e-12 for every κ. Lower orders follow
from the downward recurrence of the ratio, written for q_k = R_k/κ to stay finite at κ = 0:

.. math::

    q_{k-1} = \frac{1}{2k + \kappa^2 q_k}, \qquad
    g_\nu = g_\mu + \sum_{k=\nu+1}^{\mu} \log\!\left(1 + \frac{\kappa^2 q_k}{2k}\right),

where :math:`g_\nu(\kappa) = \ln Z` above. The recurrence contracts errors (|∂R_{k-1}/∂R_k| =
R_{k-1}² < 1), so the Debye accuracy carries down to small ν. Everything is differentiable.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["bessel_ratio", "log_bessel_iv", "log_bessel_iv_normalized"]

_DEBYE_ORDER = 100.0

# Coefficients of u_k(t) (A&S 9.3.9, 9.3.10): lists of (power, numerator) over a denominator.
_DEBYE_TERMS: tuple[tuple[float, tuple[tuple[int, float], ...]], ...] = (
    (24.0, ((1, 3.0), (3, -5.0))),
    (1152.0, ((2, 81.0), (4, -462.0), (6, 385.0))),
    (414720.0, ((3, 30375.0), (5, -369603.0), (7, 765765.0), (9, -425425.0))),
    (
        39813120.0,
        ((4, 4465125.0), (6, -94121676.0), (8, 349922430.0), (10, -446185740.0), (12, 185910725.0)),
    ),
)


def _check_order(nu: float) -> float:
    nu = float(nu)
    if not math.isfinite(nu) or nu <= -1.0:
        raise ValueError(f"nu (the Bessel order D/2 - 1) must be > -1, got {nu!r}")
    return nu


def _debye_series(mu: float, root: Tensor) -> Tensor:
    """Σ_k u_k(t)/μ^k with t = μ/√(μ² + x²) (``root`` = √(μ² + x²))."""
    t = mu / root
    series = torch.ones_like(root)
    mu_power = 1.0
    for denominator, terms in _DEBYE_TERMS:
        mu_power *= mu
        poly = sum(coef * t**power for power, coef in terms)
        series = series + poly / (denominator * mu_power)
    return series


def _debye_top(mu: float, x: Tensor) -> tuple[Tensor, Tensor]:
    """(g_μ(x), q_μ(x)) from the uniform asymptotic expansion at a large order μ.

    With S_μ = √(μ² + x²): g_μ = S_μ + μ ln 2 − μ ln(μ + S_μ) − ½ ln 2π − ½ ln S_μ + ln Γ(μ+1)
    + ln Σ u_k/μ^k. The ratio uses g_{μ+1} − g_μ written without cancelling large terms.
    """
    x2 = x * x
    root = torch.sqrt(mu * mu + x2)
    root_next = torch.sqrt((mu + 1.0) ** 2 + x2)
    series = _debye_series(mu, root)
    g = (
        root
        + mu * math.log(2.0)
        - mu * torch.log(mu + root)
        - 0.5 * math.log(2.0 * math.pi)
        - 0.5 * torch.log(root)
        + math.lgamma(mu + 1.0)
        + torch.log(series)
    )
    d_root = (2.0 * mu + 1.0) / (root + root_next)  # S_{μ+1} − S_μ
    delta = (
        d_root
        + math.log(2.0 * (mu + 1.0))
        - torch.log(mu + 1.0 + root_next)
        - mu * torch.log1p((1.0 + d_root) / (mu + root))
        - 0.5 * torch.log1p(d_root / root)
        + torch.log(_debye_series(mu + 1.0, root_next) / series)
    )
    return g, torch.exp(delta) / (2.0 * (mu + 1.0))


def _normalized_and_q(nu: float, x: Tensor) -> tuple[Tensor, Tensor]:
    """(g_ν(x), q_ν(x) = I_{ν+1}(x) / (x I_ν(x)))."""
    steps = max(0, math.ceil(_DEBYE_ORDER - nu))
    mu = nu + steps
    g, q = _debye_top(mu, x)
    x2 = x * x
    for j in range(steps):
        k = mu - j
        g = g + torch.log1p(x2 * q / (2.0 * k))
        q = 1.0 / (2.0 * k + x2 * q)
    return g, q


def log_bessel_iv_normalized(nu: float, x: Tensor) -> Tensor:
    """ln[Γ(ν+1)(2/x)^ν I_ν(x)]: the log partition function of a free sphere spin (0 at x = 0).

    ``x`` ≥ 0 is the tensor κ = βR|h|; ν > −1 a Python float.
    """
    nu = _check_order(nu)
    return _normalized_and_q(nu, x.abs())[0]


def log_bessel_iv(nu: float, x: Tensor) -> Tensor:
    """ln I_ν(x) for x > 0 (−inf at x = 0 for ν > 0), stable for large ν and x."""
    nu = _check_order(nu)
    x = x.abs()
    return log_bessel_iv_normalized(nu, x) + nu * torch.log(x / 2.0) - math.lgamma(nu + 1.0)


def bessel_ratio(
    nu: float, x: Tensor, return_over_x: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """A(x) = I_{ν+1}(x)/I_ν(x), the mean cosine of a von Mises–Fisher spin (D = 2ν + 2).

    With ``return_over_x`` also returns A(x)/x, finite at x = 0 (where it is 1/(2ν + 2)).
    """
    nu = _check_order(nu)
    _, q = _normalized_and_q(nu, x.abs())
    ratio = x * q
    return (ratio, q) if return_over_x else ratio
