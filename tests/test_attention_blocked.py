"""The blocked kernel equals the one-shot kernels, and its recomputing backward equals autograd."""

from __future__ import annotations

import pytest
import torch

from spinformer.attention import blocked_boltzmann_attention, boltzmann_rows, causal_mask

F64 = torch.float64
FIELDS = ("log_partition", "free_energy", "energy", "entropy", "heat_capacity")


def _inputs(seed, batch=2, heads=3, tgt=7, src=9, dim=4, dim_v=5):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, tgt, dim, generator=g, dtype=F64)
    k = torch.randn(batch, heads, src, dim, generator=g, dtype=F64)
    v = torch.randn(batch, heads, src, dim_v, generator=g, dtype=F64)
    return q, k, v


def _biases(seed, batch=2, heads=3, tgt=7, src=9):
    g = torch.Generator().manual_seed(seed)
    padding = torch.zeros(batch, 1, 1, src, dtype=F64)
    padding[0, ..., -3:] = float("-inf")
    causal = torch.zeros(tgt, src, dtype=F64).masked_fill(~causal_mask(tgt, src), float("-inf"))
    return {
        "none": None,
        "padding": padding,
        "causal": causal,
        "padding+causal": padding + causal,
        "additive": torch.randn(batch, heads, tgt, src, generator=g, dtype=F64),
    }


# one score, part of a row, one row, one head, two heads, one batch entry, everything
BLOCKS = [1, 5, 9, 63, 126, 189, 378, 1 << 20]


@pytest.mark.parametrize("kind", ["none", "padding", "causal", "padding+causal", "additive"])
def test_blocks_of_every_shape_equal_the_one_shot_kernel(kind):
    q, k, v = _inputs(0)
    bias = _biases(1)[kind]
    beta = torch.tensor([0.3, 1.0, 3.0], dtype=F64).view(3, 1)
    scaled = q * beta.unsqueeze(-1)
    weights, reference = boltzmann_rows(scaled @ k.transpose(-1, -2), bias, beta)
    for block in BLOCKS:
        out, thermo = blocked_boltzmann_attention(scaled, k, v, beta, bias, 1.0, block)
        torch.testing.assert_close(out, weights @ v, atol=1e-12, rtol=0)
        for name in FIELDS:
            torch.testing.assert_close(
                getattr(thermo, name), getattr(reference, name), atol=1e-12, rtol=0
            )


@pytest.mark.parametrize("beta", [1e-6, 1e6])
def test_extreme_beta_matches_the_one_shot_kernel(beta):
    q, k, v = _inputs(2)
    beta_t = torch.tensor([[beta]], dtype=F64)
    _, reference = boltzmann_rows(beta * (q @ k.transpose(-1, -2)), None, beta_t)
    for block in (5, 1 << 20):
        _, thermo = blocked_boltzmann_attention(q, k, v, beta_t, None, beta, block)
        for name in ("entropy", "heat_capacity"):
            torch.testing.assert_close(getattr(thermo, name), getattr(reference, name))
        assert all(bool(torch.isfinite(getattr(thermo, name)).all()) for name in FIELDS)


@pytest.mark.parametrize(
    ("kind", "block"), [("none", 5), ("padding+causal", 126), ("additive", 1 << 20)]
)
def test_recomputing_backward_passes_gradcheck(kind, block):
    q, k, v = (t.requires_grad_(True) for t in _inputs(3, heads=2, tgt=4, src=6, dim=3, dim_v=2))
    bias = _biases(4, heads=2, tgt=4, src=6)[kind]
    beta = torch.tensor([0.4, 1.7], dtype=F64).view(2, 1)

    def every_output(q, k, v):
        out, thermo = blocked_boltzmann_attention(q, k, v, beta, bias, 0.7, block)
        return (out, *(getattr(thermo, name) for name in FIELDS))

    assert torch.autograd.gradcheck(every_output, (q, k, v))
    # a loss that uses only some outputs (the others' gradients arrive as None)
    for name in FIELDS if block == 126 else ():

        def one(q, k, v, name=name):
            return getattr(blocked_boltzmann_attention(q, k, v, beta, bias, 0.7, block)[1], name)

        assert torch.autograd.gradcheck(one, (q, k, v))


def test_gradients_equal_autograd_through_the_one_shot_kernel():
    q, k, v = (t.requires_grad_(True) for t in _inputs(5))
    bias = _biases(6)["padding+causal"]
    beta = torch.tensor([0.5, 1.0, 2.0], dtype=F64).view(3, 1).requires_grad_(True)
    g = torch.Generator().manual_seed(7)
    weights = [torch.randn(2, 3, 7, generator=g, dtype=F64) for _ in FIELDS]
    weight_out = torch.randn(2, 3, 7, 5, generator=g, dtype=F64)

    def loss(out, thermo):
        total = (weight_out * out).sum()
        for w, name in zip(weights, FIELDS, strict=True):
            total = total + (w * getattr(thermo, name)).sum()
        return total

    scaled = q * beta.unsqueeze(-1)
    w, ref = boltzmann_rows(scaled @ k.transpose(-1, -2), bias, beta)
    expected = torch.autograd.grad(loss(w @ v, ref), (q, k, v, beta))
    scaled = q * beta.unsqueeze(-1)
    got = torch.autograd.grad(
        loss(*blocked_boltzmann_attention(scaled, k, v, beta, bias, 1.0, 20)), (q, k, v, beta)
    )
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_a_mask_that_requires_grad_is_rejected():
    q, k, v = _inputs(8)
    bias = torch.zeros(7, 9, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match="bias must not require grad"):
        blocked_boltzmann_attention(q, k, v, torch.ones(1, 1, dtype=F64), bias)
