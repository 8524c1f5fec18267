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

The radial variance A' = dA/dx = 1 − A² − (2ν+1)A/x cancels catastrophically when x ≫ ν
(A' ≈ (2ν+1)/(2x²)); :func:`vmf_moments` carries it down the same recurrence from the Debye
slope instead (relative accuracy ~1e-10 for x from 0 to 1e8 and beyond, checked against
mpmath). All moments are functions of x², so derivatives through x = βR|θ| exist at θ = 0.

Precision. Inputs in float16/bfloat16/float32 are evaluated in float64 and rounded once, so a
float32 caller gets float32-rounded moments (relative ~1e-7) at any x; quantities a caller
forms by cancellation, such as S = βU + ln Z at large β, still lose ε₃₂·β|U| absolutely.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "bessel_ratio",
    "bessel_ratio_derivative",
    "log_bessel_iv",
    "log_bessel_iv_normalized",
    "vmf_moments",
]

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


def _debye_top(mu: float, x2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""(g_μ, q_μ, A'_μ) at x² = ``x2`` from the uniform asymptotic expansion at a large order μ.

    With S_μ = √(μ² + x²): g_μ = S_μ + μ ln 2 − μ ln(μ + S_μ) − ½ ln 2π − ½ ln S_μ + ln Γ(μ+1)
    + ln P, P = Σ u_k(t)/μ^k, used as g_μ(x) − g_μ(0) (g is exactly 0 at x = 0), which
    cancels the O(μ ln μ) terms analytically. The ratio uses g_{μ+1} − g_μ written without cancelling large
    terms. The slope follows from A_μ = d ln I_μ/dx − μ/x = x/(S + μ) − x/(2S²) + (ln P)':

    .. math::

        A'_\mu = \frac{\mu}{S(S+\mu)} + \frac{x^2 - \mu^2}{2S^4} + (\ln P)'' ,

    a sum of terms that do not cancel (1 − A² − (2μ+1)A/x loses all digits when x ≫ μ).
    """
    root = torch.sqrt(mu * mu + x2)
    root_next = torch.sqrt((mu + 1.0) ** 2 + x2)
    series = _debye_series(mu, root)
    # g_μ(x) − g_μ(0) (the exact g_μ(0) is 0), written without cancelling large terms
    lift = x2 / (root + mu)  # S_μ − μ
    series_at_zero = float(_debye_series(mu, torch.tensor(mu, dtype=torch.float64)))
    g = (
        lift
        - mu * torch.log1p(lift / (2.0 * mu))
        - 0.5 * torch.log1p(lift / mu)
        + torch.log(series / series_at_zero)
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
    q = torch.exp(delta) / (2.0 * (mu + 1.0))
    # (ln P)'' by the chain rule through t = μ/S: t' = −μx/S³, t'' = μ(2x² − μ²)/S⁵.
    t = mu / root
    first = torch.zeros_like(root)
    second = torch.zeros_like(root)
    mu_power = 1.0
    for denominator, terms in _DEBYE_TERMS:
        mu_power *= mu
        first = first + sum(c * p * t ** (p - 1) for p, c in terms) / (denominator * mu_power)
        second = second + sum(c * p * (p - 1) * t ** (p - 2) for p, c in terms) / (
            denominator * mu_power
        )
    log_first = first / series
    log_second = second / series - log_first**2
    root2 = root * root
    dt2 = mu * mu * x2 / (root2 * root2 * root2)
    ddt = mu * (2.0 * x2 - mu * mu) / (root2 * root2 * root)
    slope = (
        mu / (root * (root + mu))
        + (x2 - mu * mu) / (2.0 * root2 * root2)
        + log_second * dt2
        + log_first * ddt
    )
    return g, q, slope


_UPCAST = (torch.float16, torch.bfloat16, torch.float32)


def vmf_moments(nu: float, x2: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""(g, q, A', q') of a von Mises–Fisher spin as smooth functions of x² (``x2`` ≥ 0).

    g = ln[Γ(ν+1)(2/x)^ν I_ν(x)], q = A/x, A' = dA/dx (the radial variance over R²) and
    q' = dq/d(x²) = (A' − q)/(2x²) (finite at x = 0, where it is −1/(D²(D+2))). Each is a
    function of x² alone, so derivatives in θ through x² = β²R²|θ|² are finite at θ = 0.

    A' and q' come from the downward recurrences (differentiating q_{k−1} = 1/(2k + x²q_k))

    .. math::

        A'_{k-1} = q_{k-1}^2\,(2k - x^2 A'_k), \qquad
        q'_{k-1} = -\tfrac12\,(q_k + A'_k)\,q_{k-1}^2,

    started from the Debye slope (:func:`_debye_top`); neither subtracts nearly equal numbers,
    whereas 1 − A² − (D−1)A/x loses ~log10(x²/ν) digits (A' ≈ (2ν+1)/(2x²) for x ≫ ν). For
    D = 1 (ν = −½, where A' = sech² x is exponentially small) the closed form is used for x > 1.
    Half and single precision inputs are evaluated in float64 and rounded once at the end.
    """
    nu = _check_order(nu)
    dtype = x2.dtype
    if dtype in _UPCAST and x2.device.type != "mps":
        x2 = x2.to(torch.float64)
    steps = max(1, math.ceil(_DEBYE_ORDER - nu))
    mu = nu + steps
    g, q, slope = _debye_top(mu, x2)
    q_slope = torch.zeros_like(q)
    for j in range(steps):
        k = mu - j
        g = g + torch.log1p(x2 * q / (2.0 * k))
        q_next, slope_next = q, slope
        q = 1.0 / (2.0 * k + x2 * q_next)
        slope = q * q * (2.0 * k - x2 * slope_next)
        q_slope = -0.5 * (q_next + slope_next) * q * q
    if nu == -0.5:
        safe = torch.where(x2 > 1.0, x2, torch.ones_like(x2))
        slope = torch.where(x2 > 1.0, 1.0 / torch.cosh(torch.sqrt(safe)) ** 2, slope)
    if g.dtype != dtype:
        return g.to(dtype), q.to(dtype), slope.to(dtype), q_slope.to(dtype)
    return g, q, slope, q_slope


def _normalized_and_q(nu: float, x: Tensor) -> tuple[Tensor, Tensor]:
    """(g_ν(x), q_ν(x) = I_{ν+1}(x) / (x I_ν(x)))."""
    g, q, _, _ = vmf_moments(nu, x * x)
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


def bessel_ratio_derivative(nu: float, x: Tensor) -> Tensor:
    """A'(x) = 1 − A² − (2ν+1)A/x, the variance of the cosine of a von Mises–Fisher spin.

    Computed without cancellation (see :func:`vmf_moments`): relative accuracy ~1e-12 in
    float64 for every x ≥ 0, where the defining formula loses ~log10(x²/ν) digits. A'(0) =
    1/(2ν + 2); A' ≈ (2ν+1)/(2x²) for x ≫ ν.
    """
    return vmf_moments(nu, x * x)[2]
