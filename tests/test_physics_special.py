"""Bessel functions for vector spins against scipy and closed forms, at large order and argument."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spinformer.physics import (
    bessel_ratio,
    bessel_ratio_derivative,
    log_bessel_iv,
    log_bessel_iv_normalized,
)
from spinformer.physics.special import vmf_moments

scipy_special = pytest.importorskip("scipy.special")

ORDERS = [-0.5, 0.0, 0.5, 1.0, 7.3, 31.0, 99.5, 150.0, 1023.0, 1e5]
ARGUMENTS = [1e-8, 1e-3, 0.1, 1.0, 10.0, 100.0, 1e4, 1e6]


@pytest.mark.parametrize("nu", ORDERS)
def test_log_iv_and_ratio_match_scipy(nu):
    x = torch.tensor(ARGUMENTS, dtype=torch.float64)
    ive_nu = scipy_special.ive(nu, x.numpy())
    ive_next = scipy_special.ive(nu + 1, x.numpy())
    ok = torch.from_numpy(ive_nu > 1e-290)  # scipy underflows for tiny x at huge order
    ref_log = torch.log(torch.from_numpy(ive_nu).clamp_min(1e-300)) + x
    ours_log = log_bessel_iv(nu, x)
    torch.testing.assert_close(ours_log[ok], ref_log[ok], rtol=1e-12, atol=1e-12)
    ref_ratio = torch.from_numpy(ive_next / ive_nu.clip(1e-300))
    torch.testing.assert_close(bessel_ratio(nu, x)[ok], ref_ratio[ok], rtol=1e-10, atol=1e-14)


def test_half_integer_closed_forms():
    x = torch.tensor([1e-6, 0.3, 2.0, 40.0, 700.0], dtype=torch.float64)
    # nu = 1/2: Gamma(3/2) (2/x)^(1/2) I_(1/2)(x) = sinh(x)/x ; ratio = coth x - 1/x (Langevin)
    torch.testing.assert_close(log_bessel_iv_normalized(0.5, x), torch.log(torch.sinh(x) / x))
    langevin = torch.where(
        x < 1e-3, x / 3 - x**3 / 45, 1 / torch.tanh(x) - 1 / x
    )  # series avoids cancellation
    torch.testing.assert_close(bessel_ratio(0.5, x), langevin, rtol=1e-12, atol=1e-15)
    # nu = -1/2 (D = 1, Ising-like): Z = cosh x, ratio = tanh x
    torch.testing.assert_close(log_bessel_iv_normalized(-0.5, x), torch.log(torch.cosh(x)))
    torch.testing.assert_close(bessel_ratio(-0.5, x), torch.tanh(x))


def test_small_argument_limits_and_gradient_are_finite():
    x = torch.tensor([0.0, 1e-300, 1e-12], dtype=torch.float64, requires_grad=True)
    g = log_bessel_iv_normalized(127.0, x)
    _ratio, over_x = bessel_ratio(127.0, x, return_over_x=True)
    assert float(g[0].detach()) == pytest.approx(0.0, abs=1e-12)
    assert float(over_x[0].detach()) == pytest.approx(1 / (2 * 128.0), rel=1e-12)
    (grad,) = torch.autograd.grad(g.sum(), x)
    assert torch.isfinite(grad).all()


def test_derivative_of_log_partition_is_the_ratio():
    # d/dx ln[Gamma(nu+1)(2/x)^nu I_nu(x)] = I_{nu+1}(x)/I_nu(x): autodiff vs the ratio route
    x = torch.tensor([0.01, 0.7, 5.0, 80.0, 3e3], dtype=torch.float64, requires_grad=True)
    for nu in (0.0, 2.5, 63.0, 250.0):
        (grad,) = torch.autograd.grad(log_bessel_iv_normalized(nu, x).sum(), x)
        torch.testing.assert_close(grad, bessel_ratio(nu, x.detach()), rtol=1e-10, atol=1e-13)


@settings(max_examples=50, deadline=None)
@given(nu=st.floats(-0.49, 2000.0), x=st.floats(1e-6, 1e5))
def test_ratio_obeys_amos_bounds(nu, x):
    # Amos (1974): max(x / (nu + 1 + sqrt((nu+1)^2 + x^2)), x / (nu + 1/2 + sqrt((nu+3/2)^2 + x^2)))
    #   <= I_{nu+1}/I_nu <= x / (nu + 1/2 + sqrt((nu+1/2)^2 + x^2))
    r = float(bessel_ratio(nu, torch.tensor(x, dtype=torch.float64)))
    lower = max(
        x / (nu + 1 + math.sqrt((nu + 1) ** 2 + x**2)),
        x / (nu + 0.5 + math.sqrt((nu + 1.5) ** 2 + x**2)),
    )
    upper = x / (nu + 0.5 + math.sqrt((nu + 0.5) ** 2 + x**2))
    assert lower * (1 - 1e-12) <= r <= upper * (1 + 1e-12)


def test_order_is_validated():
    with pytest.raises(ValueError, match=r"nu .* must be > -1"):
        bessel_ratio(-1.0, torch.tensor(1.0))


# -- the radial variance A' and q' = dq/d(x²) without cancellation ----------------------------

mpmath = pytest.importorskip("mpmath")


def _mp_moments(nu: float, x: float) -> tuple[float, float]:
    """A'(x) and q'(x²) = (A' − A/x)/(2x²) at 60 significant digits (mpmath)."""
    with mpmath.workdps(60):
        xm = mpmath.mpf(x)
        ratio = mpmath.besseli(nu + 1, xm) / mpmath.besseli(nu, xm)
        slope = 1 - ratio**2 - (2 * nu + 1) * ratio / xm
        return float(slope), float((slope - ratio / xm) / (2 * xm * xm))


@pytest.mark.parametrize("dim", [1, 2, 3, 4, 9, 64, 257])
def test_radial_variance_and_q_slope_match_mpmath_for_beta_1e_minus6_to_1e8(dim):
    """A' and q' to 1e-9 relative for κ from 1e-6 to 1e8 (the textbook 1 − A² − (D−1)A/κ is
    off by 6e-5 at κ = 1e5 and 5e-3 at κ = 1e6 for D = 2)."""
    nu = dim / 2 - 1
    kappas = [1e-6, 1e-3, 0.1, 1.0, 7.0, 50.0, 1e3, 1e5, 1e6, 1e8]
    x = torch.tensor(kappas, dtype=torch.float64)
    _, _, slope, q_slope = vmf_moments(nu, x * x)
    ref = [_mp_moments(nu, k) for k in kappas]
    torch.testing.assert_close(
        slope, torch.tensor([r[0] for r in ref], dtype=torch.float64), rtol=1e-9, atol=0
    )
    torch.testing.assert_close(
        q_slope, torch.tensor([r[1] for r in ref], dtype=torch.float64), rtol=1e-9, atol=0
    )
    torch.testing.assert_close(bessel_ratio_derivative(nu, x), slope)
    # large-κ limit A' → (D − 1)/(2κ²), with a relative correction O(D/κ)
    if dim > 1:
        assert float(slope[-1]) * 1e16 == pytest.approx((dim - 1) / 2, rel=dim * 1e-8)


def test_moments_are_smooth_at_zero_argument():
    """q' at x = 0 is −1/(D²(D + 2)) and every moment has finite derivatives there."""
    for dim in (2, 3, 8):
        x2 = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        g, q, slope, q_slope = vmf_moments(dim / 2 - 1, x2)
        (grad,) = torch.autograd.grad((g + q + slope + q_slope).sum(), x2, create_graph=True)
        (second,) = torch.autograd.grad(grad.sum(), x2)
        g, q, slope, q_slope = (t.detach() for t in (g, q, slope, q_slope))
        assert float(g) == 0.0
        assert float(q) == pytest.approx(1 / dim, rel=1e-12)
        assert float(slope) == pytest.approx(1 / dim, rel=1e-12)
        assert float(q_slope) == pytest.approx(-1 / (dim**2 * (dim + 2)), rel=1e-10)
        assert bool(torch.isfinite(grad).all()) and bool(torch.isfinite(second).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_free_vector_spins_heat_capacity_from_high_to_zero_temperature(dtype):
    """Free spins, C = β² Σ R²|h|² A'(βR|h|): exactly (D − 1)/2 per spin as β → ∞ (harmonic
    transverse modes) and D-independent β²R²|h|²/D → 0 as β → 0. float32 keeps 1e-6 relative
    at any β (the Bessel moments are evaluated in float64); the textbook float32 formula gave
    C = −171 at β = 1e4 for N = 9, D = 2."""
    from spinformer.physics import VectorSpinModel, thermodynamics

    g = torch.Generator().manual_seed(3)
    n, dim = 9, 2
    field = (torch.rand(n, dim, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    betas = torch.tensor([1e-6, 1e4, 1e8], dtype=dtype)
    r = thermodynamics(
        VectorSpinModel(torch.zeros(n, n, dtype=dtype), field, betas), susceptibility=False
    )
    kappa = betas.double()[:, None] * field.double().norm(dim=-1)
    ref = torch.tensor(
        [[_mp_moments(dim / 2 - 1, float(k))[0] for k in row] for row in kappa],
        dtype=torch.float64,
    )
    expected = (kappa**2 * ref).sum(-1)
    rtol = 2e-6 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(r.heat_capacity.double(), expected, rtol=rtol, atol=0)
    assert float(r.heat_capacity[1]) == pytest.approx(n * (dim - 1) / 2, rel=1e-3)
    assert float(r.heat_capacity[2]) == pytest.approx(n * (dim - 1) / 2, rel=10 * rtol)
