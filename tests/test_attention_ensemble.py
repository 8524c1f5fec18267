"""Boltzmann ensembles of attention rows: thermodynamic identities by independent routes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spinformer.attention import (
    blocked_boltzmann_attention,
    boltzmann_rows,
    causal_mask,
    ensemble,
    padding_mask,
)

F64 = torch.float64


def _qk(seed: int, batch=(2, 3), nq=5, nk=7, d=4, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*batch, nq, d, generator=g, dtype=dtype)
    k = torch.randn(*batch, nk, d, generator=g, dtype=dtype)
    return q, k


def test_log_partition_is_logsumexp_and_weights_are_softmax():
    q, k = _qk(0)
    ens = ensemble(q, k, 0.7)
    scores = torch.einsum("...id,...jd->...ij", q, k)
    torch.testing.assert_close(ens.log_partition, torch.logsumexp(0.7 * scores, -1))
    torch.testing.assert_close(ens.weights, torch.softmax(0.7 * scores, -1))
    torch.testing.assert_close(ens.free_energy, -torch.logsumexp(0.7 * scores, -1) / 0.7)


def test_entropy_shannon_equals_beta_u_minus_f():
    q, k = _qk(1)
    ens = ensemble(q, k, 1.3)
    alpha = ens.weights
    shannon = -torch.xlogy(alpha, alpha).sum(-1)
    torch.testing.assert_close(ens.entropy, shannon)
    torch.testing.assert_close(ens.entropy, 1.3 * (ens.energy - ens.free_energy))


def test_energy_and_heat_capacity_are_beta_derivatives_of_log_partition():
    q, k = _qk(2)
    scores = (q @ k.transpose(-1, -2)).detach()
    beta0 = 0.9
    beta = torch.tensor(beta0, dtype=F64, requires_grad=True)
    log_z = torch.logsumexp(beta * scores, -1)
    (d1,) = torch.autograd.grad(log_z.sum(), beta, create_graph=True)
    first = torch.autograd.functional.jacobian(
        lambda b: torch.logsumexp(b * scores, -1), torch.tensor(beta0, dtype=F64)
    )
    second = torch.autograd.functional.jacobian(
        lambda b: torch.autograd.functional.jacobian(
            lambda c: torch.logsumexp(c * scores, -1), b, create_graph=True
        ),
        torch.tensor(beta0, dtype=F64),
    )
    ens = ensemble(q, k, beta0)
    torch.testing.assert_close(ens.energy, -first)  # U = −∂ ln Z/∂β
    torch.testing.assert_close(ens.heat_capacity, beta0**2 * second)  # C = β² ∂² ln Z/∂β²
    # and C = β² Var_α(E) from the weights directly
    energies = -scores
    mean = (ens.weights * energies).sum(-1, keepdim=True)
    variance = (ens.weights * (energies - mean) ** 2).sum(-1)
    torch.testing.assert_close(ens.heat_capacity, beta0**2 * variance)
    assert d1.shape == ()


def test_gradient_of_log_partition_is_beta_times_key_magnetization():
    q, k = _qk(3)
    q = q.clone().requires_grad_(True)
    ens = ensemble(q, k, 0.6)
    (grad,) = torch.autograd.grad(ens.log_partition.sum(), q)
    torch.testing.assert_close(grad, 0.6 * ens.magnetization(k))
    torch.testing.assert_close(grad, 0.6 * ens.weights @ k)


def test_per_head_beta_broadcasts_over_batch():
    q, k = _qk(4, batch=(2, 3))
    beta = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    ens = ensemble(q, k, beta)
    for h in range(3):
        single = ensemble(q[:, h], k[:, h], float(beta[h]))
        torch.testing.assert_close(ens.log_partition[:, h], single.log_partition)
        torch.testing.assert_close(ens.heat_capacity[:, h], single.heat_capacity)


def test_padding_and_causal_masks_restrict_the_states():
    q, k = _qk(5, batch=(2,), nq=6, nk=6)
    pad = padding_mask(torch.tensor([4, 6]), 6)  # (2, 1, 6)
    ens = ensemble(q, k, 1.1, mask=pad, is_causal=True)
    for b, length in enumerate((4, 6)):
        for i in range(6):
            keys = min(i + 1, length)
            sub = ensemble(q[b, i : i + 1], k[b, :keys], 1.1)
            torch.testing.assert_close(ens.log_partition[b, i], sub.log_partition[0])
            torch.testing.assert_close(ens.entropy[b, i], sub.entropy[0])
            torch.testing.assert_close(ens.heat_capacity[b, i], sub.heat_capacity[0])
            assert float(ens.weights[b, i, keys:].abs().sum()) == 0.0
    # boolean mask = additive {0, −inf}
    bias = torch.zeros(6, 6, dtype=F64).masked_fill(~causal_mask(6), float("-inf"))
    additive = ensemble(q, k, 1.1, mask=bias)
    torch.testing.assert_close(
        additive.log_partition, ensemble(q, k, 1.1, is_causal=True).log_partition
    )


def test_additive_mask_is_a_log_degeneracy():
    q, k = _qk(6)
    g = torch.Generator().manual_seed(60)
    a = torch.randn(5, 7, generator=g, dtype=F64)
    ens = ensemble(q, k, 0.8, mask=a)
    scores = q @ k.transpose(-1, -2)
    torch.testing.assert_close(ens.weights, torch.softmax(0.8 * scores + a, -1))
    torch.testing.assert_close(ens.log_partition, torch.logsumexp(0.8 * scores + a, -1))
    alpha = ens.weights
    degenerate = -torch.xlogy(alpha, alpha).sum(-1) + (alpha * a).sum(-1)
    torch.testing.assert_close(ens.entropy, degenerate)
    torch.testing.assert_close(ens.entropy, 0.8 * (ens.energy - ens.free_energy))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("beta", [1e-6, 1e-3, 1.0, 1e3, 1e6])
def test_finite_and_correct_limits_at_extreme_beta(dtype, beta):
    q, k = _qk(7, dtype=dtype)
    ens = ensemble(q, k, beta)
    thermo = ens.thermodynamics()
    for name in ("log_partition", "free_energy", "energy", "entropy", "heat_capacity"):
        assert bool(torch.isfinite(getattr(thermo, name)).all()), name
    n = k.shape[-2]
    assert bool((thermo.entropy >= -1e-5).all()) and bool(
        (thermo.entropy <= math.log(n) + 1e-5).all()
    )
    assert bool((thermo.heat_capacity >= 0).all())
    if beta <= 1e-6:
        torch.testing.assert_close(thermo.entropy, torch.full_like(thermo.entropy, math.log(n)))
    if beta >= 1e6:  # one ground state per row: S → 0, F → E_min
        assert float(thermo.entropy.abs().max()) < 1e-4
        e_min = -(q @ k.transpose(-1, -2)).amax(-1)
        torch.testing.assert_close(thermo.free_energy, e_min, rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), log_beta=st.floats(-4.0, 4.0))
def test_properties_hold_for_all_inputs(seed, log_beta):
    q, k = _qk(seed, batch=(2,), nq=3, nk=5, d=3)
    beta = 10.0**log_beta
    ens = ensemble(q, k, beta)
    torch.testing.assert_close(ens.weights.sum(-1), torch.ones(2, 3, dtype=F64))
    assert bool((ens.entropy >= -1e-9).all()) and bool((ens.entropy <= math.log(5) + 1e-9).all())
    assert bool((ens.heat_capacity >= 0).all())
    torch.testing.assert_close(
        ens.entropy, beta * (ens.energy - ens.free_energy), rtol=1e-6, atol=1e-6 * max(1.0, beta)
    )


def test_blocked_kernel_matches_differentiable_kernel():
    q, k = _qk(8, nq=6, nk=6)
    v = torch.randn(2, 3, 6, 5, generator=torch.Generator().manual_seed(80), dtype=F64)
    beta = torch.tensor([[0.3], [1.0], [4.0]], dtype=F64)
    bias = torch.zeros(6, 6, dtype=F64).masked_fill(~causal_mask(6), float("-inf"))
    bias = bias + 0.1 * torch.randn(6, 6, generator=torch.Generator().manual_seed(81), dtype=F64)
    scaled = beta.unsqueeze(-1) * q
    weights, reference = boltzmann_rows(scaled @ k.transpose(-1, -2), bias, beta)
    with torch.no_grad():
        out, thermo = blocked_boltzmann_attention(scaled, k, v, beta, bias, 1.0, 16)
    torch.testing.assert_close(out, weights @ v)
    for name in ("log_partition", "free_energy", "energy", "entropy", "heat_capacity", "beta"):
        torch.testing.assert_close(getattr(thermo, name), getattr(reference, name))


def test_bad_input_is_rejected():
    q, k = _qk(9, batch=(2,))
    with pytest.raises(ValueError, match="head dimension"):
        ensemble(q, k[..., :3], 1.0)
    with pytest.raises(ValueError, match="beta must be positive"):
        ensemble(q, k, 0.0)
    with pytest.raises(ValueError, match="beta must be positive"):
        ensemble(q, k, -1.0)
    with pytest.raises(ValueError, match="beta must be finite"):
        ensemble(q, k, float("nan"))
    with pytest.raises(ValueError, match="beta must broadcast"):
        ensemble(q, k, torch.ones(3, dtype=F64))
    bad = q.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="q must be finite"):
        ensemble(bad, k, 1.0)
    with pytest.raises(ValueError, match="mask must broadcast"):
        ensemble(q, k, 1.0, mask=torch.ones(4, 4, dtype=torch.bool))
    blocked = torch.ones(5, 7, dtype=torch.bool)
    blocked[2] = False
    with pytest.raises(ValueError, match="fully masked row"):
        ensemble(q, k, 1.0, mask=blocked)
    with pytest.raises(ValueError, match="NaN"):
        ensemble(q, k, 1.0, mask=torch.full((5, 7), float("nan"), dtype=F64))
    with pytest.raises(ValueError, match="lengths"):
        padding_mask(torch.tensor([0, 3]), 7)
    with pytest.raises(ValueError, match="num_keys"):
        ensemble(q, k, 1.0).magnetization(torch.ones(2, 3, 4, dtype=F64))
