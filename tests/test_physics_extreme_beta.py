"""Exact thermodynamics at extreme inverse temperature, 1e-6 <= beta <= 1e8, in float64.

References are computed independently of the library: the periodic chain's eigenvalue closed
form and the open chain's 2 x 2 transfer matrix in 60-digit arithmetic (mpmath), with U and C
as high-precision derivatives of ln Z; the beta -> 0 expansion and the beta -> infinity limits
(S -> ln of the ground-state degeneracy, C -> 0, U -> E_0) by counting states.
"""

from __future__ import annotations

import math

import mpmath
import pytest
import torch

from spinformer.physics import chain, square_lattice, thermodynamics

BETAS = (1e-6, 1e-3, 0.3, 1.0, 3.0, 30.0, 1e3, 1e6, 1e8)
RTOL = 1e-9


def _chain_log_partition(n: int, coupling: float, field: float, periodic: bool):
    """ln Z(beta) of the Ising chain as an mpmath function (60 digits)."""
    j, h = mpmath.mpf(coupling), mpmath.mpf(field)

    def log_z(beta):
        k, b = beta * j, beta * h
        if periodic:  # Z = lambda_+^N + lambda_-^N (Kramers & Wannier 1941)
            root = mpmath.sqrt(mpmath.exp(2 * k) * mpmath.sinh(b) ** 2 + mpmath.exp(-2 * k))
            lam_p = mpmath.exp(k) * mpmath.cosh(b) + root
            lam_m = mpmath.exp(k) * mpmath.cosh(b) - root
            return mpmath.log(lam_p**n + lam_m**n)
        spins = (1, -1)
        t = mpmath.matrix([[mpmath.exp(k * s * r + b * (s + r) / 2) for r in spins] for s in spins])
        edge = mpmath.matrix([mpmath.exp(b * s / 2) for s in spins])
        return mpmath.log((edge.T * t ** (n - 1) * edge)[0])

    return log_z


def _chain_reference(n, coupling, field, periodic, beta):
    """(ln Z, U, S, C) at beta from the closed form, derivatives to 60 digits."""
    with mpmath.workdps(60):
        log_z = _chain_log_partition(n, coupling, field, periodic)
        b = mpmath.mpf(beta)
        value = log_z(b)
        energy = -mpmath.diff(log_z, b)
        heat = b**2 * mpmath.diff(log_z, b, 2)
        return float(value), float(energy), float(b * energy + value), float(heat)


def _close(actual: float, expected: float, scale: float) -> bool:
    """Relative 1e-9, absolute (1e-9 of the quantity's natural scale) near zero."""
    return abs(actual - expected) <= RTOL * max(abs(expected), 1e-3 * scale)


@pytest.mark.parametrize(
    "n, coupling, field, periodic",
    [(10, 1.0, 0.3, True), (10, 1.0, 0.0, True), (9, -1.0, 0.3, False), (10, 1.0, 0.0, False)],
)
@pytest.mark.parametrize("route", ["transfer", "enumerate"])
def test_chain_matches_closed_form_at_every_beta(n, coupling, field, periodic, route):
    betas = torch.tensor(BETAS, dtype=torch.float64)
    model = chain(n, coupling=coupling, field=field, beta=betas, periodic=periodic)
    result = thermodynamics(model, route=route)
    scale = n * (abs(coupling) + abs(field))  # energy scale of the chain
    for i, beta in enumerate(BETAS):
        log_z, energy, entropy, heat = _chain_reference(n, coupling, field, periodic, beta)
        got = {
            "ln Z": (float(result.log_partition[i]), log_z, beta * scale),
            "F": (float(result.free_energy[i]), -log_z / beta, scale),
            "U": (float(result.energy[i]), energy, scale),
            "S": (float(result.entropy[i]), entropy, 1.0),
            "C": (float(result.heat_capacity[i]), heat, 1.0),
        }
        for name, (actual, expected, natural) in got.items():
            assert _close(actual, expected, natural), (name, beta, actual, expected)


@pytest.mark.parametrize("route", ["transfer", "enumerate"])
@pytest.mark.parametrize("field", [0.0, 0.1])
def test_torus_low_temperature_limits(route, field):
    """4x4 torus: S -> ln g0, C -> 0, U -> E_0 (beta = 1e6 gave S = 0.635, 1e8 gave 6.79)."""
    betas = torch.tensor([1e3, 1e6, 1e8], dtype=torch.float64)
    result = thermodynamics(square_lattice(4, field=field, beta=betas), route=route)
    ground = -32.0 - 16 * field  # all 32 bonds satisfied, all spins along the field
    degeneracy = 1 if field else 2
    torch.testing.assert_close(result.entropy, torch.full_like(betas, math.log(degeneracy)))
    torch.testing.assert_close(result.heat_capacity, torch.zeros_like(betas), atol=1e-12, rtol=0)
    torch.testing.assert_close(result.energy, torch.full_like(betas, ground), rtol=1e-15, atol=0)
    torch.testing.assert_close(
        result.free_energy, ground - math.log(degeneracy) / betas, rtol=1e-15, atol=0
    )
    if field:  # a unique ground state: no fluctuations left
        torch.testing.assert_close(
            result.susceptibility, torch.zeros_like(result.susceptibility), atol=1e-12, rtol=0
        )


def test_torus_high_temperature_expansion():
    """beta -> 0: ln Z = N ln 2 + beta^2 N_b / 2, U = -beta N_b, C = beta^2 N_b (+ O(beta^4))."""
    beta, bonds = 1e-6, 32
    for route in ("transfer", "enumerate"):
        result = thermodynamics(square_lattice(4, beta=beta), route=route)
        assert float(result.log_partition) == pytest.approx(
            16 * math.log(2) + beta**2 * bonds / 2, rel=1e-15
        )
        assert float(result.energy) == pytest.approx(-beta * bonds, rel=1e-9)
        assert float(result.heat_capacity) == pytest.approx(beta**2 * bonds, rel=1e-9)
        assert float(result.entropy) == pytest.approx(
            16 * math.log(2) - beta**2 * bonds / 2, rel=1e-15
        )


def test_transfer_beyond_enumeration_reaches_the_ground_state():
    """8x6 torus (N = 48, transfer only): the two ordered states at beta = 1e8."""
    result = thermodynamics(square_lattice((8, 6), beta=1e8), susceptibility=False)
    assert float(result.entropy) == pytest.approx(math.log(2), rel=1e-12)
    assert float(result.energy) == -96.0
    assert abs(float(result.heat_capacity)) < 1e-12


def test_frustrated_ring_at_huge_beta_falls_back_to_enumeration():
    """Odd antiferromagnetic ring: 2N ground states (one broken bond); at beta = 1e8 the
    transfer matrices' open-path gauge cannot represent the cycle, enumeration takes over."""
    model = chain(9, coupling=-1.0, beta=torch.tensor([10.0, 1e8]))
    result = thermodynamics(model)
    torch.testing.assert_close(result.entropy[1], torch.tensor(math.log(18.0), dtype=torch.float64))
    with pytest.raises(ValueError, match="route='enumerate'"):
        thermodynamics(model, route="transfer")
    low = thermodynamics(model.with_beta(10.0), route="transfer")
    assert float(low.entropy) == pytest.approx(math.log(18.0), rel=1e-9)
