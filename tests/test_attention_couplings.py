"""Couplings W_QK = W_Kᵀ W_Q, fields and spectra, against torch's attention and dense algebra."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from spinformer.attention import couplings
from spinformer.nn import BoltzmannAttention

F64 = torch.float64


def _mha(
    seed: int = 0, dim: int = 12, heads: int = 3, kdim: int | None = None
) -> nn.MultiheadAttention:
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(dim, heads, batch_first=True, kdim=kdim, vdim=kdim, dtype=F64)
    with torch.no_grad():
        mha.in_proj_bias.normal_()
    return mha.eval()


def test_coupling_reproduces_scores_and_field_shifts_keys():
    mha = _mha()
    c = couplings(mha)
    x = torch.randn(6, 12, generator=torch.Generator().manual_seed(1), dtype=F64)
    q, k = c.project(x)  # with biases, as the layer computes them
    w_q, w_k, _ = mha.in_proj_weight.detach().chunk(3)
    b_q, b_k, _ = mha.in_proj_bias.detach().chunk(3)
    q_ref = (x @ w_q.T + b_q).view(6, 3, 4).transpose(0, 1)
    k_ref = (x @ w_k.T + b_k).view(6, 3, 4).transpose(0, 1)
    torch.testing.assert_close(q, q_ref)
    torch.testing.assert_close(k, k_ref)
    scores = q @ k.transpose(-1, -2)  # ω_ij = k_j·q_i, (H, i, j)
    coupling = torch.einsum("ja,hab,ib->hij", x, c.w_qk, x)
    field = torch.einsum("ja,ha->hj", x, c.field)[:, None, :]
    remainder = scores - coupling - field
    # what is left depends on i only (b_K·q_i terms): it cancels in the weights
    torch.testing.assert_close(remainder, remainder[..., :1].expand_as(remainder))
    # without biases the coupling alone is the score
    bare = couplings(w_q, w_k, num_heads=3)
    torch.testing.assert_close(
        torch.einsum("ja,hab,ib->hij", x, bare.w_qk, x),
        (x @ w_q.T).view(6, 3, 4).transpose(0, 1) @ (x @ w_k.T).view(6, 3, 4).permute(1, 2, 0),
    )


def test_ensemble_weights_equal_torch_attention_weights():
    mha = _mha(2)
    c = couplings(mha)
    torch.testing.assert_close(c.beta, torch.full((3,), 0.5, dtype=F64))  # 1/√4
    x = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(3), dtype=F64)
    _, weights = mha(x, x, x, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(c.ensemble(x).weights, weights)


def test_spectra_and_asymmetry_from_factors_match_dense_algebra():
    g = torch.Generator().manual_seed(4)
    w_q = torch.randn(8, 10, generator=g, dtype=F64)
    w_k = torch.randn(8, 10, generator=g, dtype=F64)
    c = couplings(w_q, w_k, num_heads=2)
    dense = c.w_qk
    torch.testing.assert_close(
        c.singular_values, torch.linalg.svdvals(dense).sort(-1, descending=True).values
    )
    sym = 0.5 * (dense + dense.transpose(-1, -2))
    torch.testing.assert_close(c.symmetric, sym)
    torch.testing.assert_close(c.symmetric_eigenvalues, torch.linalg.eigvalsh(sym))
    anti = 0.5 * (dense - dense.transpose(-1, -2))
    torch.testing.assert_close(c.antisymmetric, anti)
    torch.testing.assert_close(c.frobenius_norm, torch.linalg.matrix_norm(dense))
    torch.testing.assert_close(
        c.asymmetry, torch.linalg.matrix_norm(anti) / torch.linalg.matrix_norm(dense)
    )
    assert int((c.singular_values > 1e-10).sum(-1).max()) == 4  # rank ≤ d_head


def test_symmetric_and_antisymmetric_limits():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(4, 6, generator=g, dtype=F64)
    assert float(couplings(w, w, num_heads=1).asymmetry) == pytest.approx(0.0, abs=1e-7)
    # W_K = W_Q R with R an antisymmetric... use W_Q = [a; b], W_K = [b; −a] → W_QK = bᵀa − aᵀb
    a, b = torch.randn(1, 6, generator=g, dtype=F64), torch.randn(1, 6, generator=g, dtype=F64)
    c = couplings(torch.cat([a, b]), torch.cat([b, -a]), num_heads=1)
    torch.testing.assert_close(c.w_qk, -c.w_qk.transpose(-1, -2))
    assert float(c.asymmetry) == pytest.approx(1.0)


def test_module_sources_agree_and_carry_beta():
    mha = _mha(6)
    ours = BoltzmannAttention.from_torch(mha, beta=torch.tensor([0.1, 0.2, 0.3], dtype=F64))
    a, b = couplings(mha), couplings(ours)
    torch.testing.assert_close(a.w_qk, b.w_qk)
    torch.testing.assert_close(a.field, b.field)
    torch.testing.assert_close(b.beta, torch.tensor([0.1, 0.2, 0.3], dtype=F64))
    torch.testing.assert_close(couplings(mha, beta=2.0).beta, torch.full((3,), 2.0, dtype=F64))


def test_cross_attention_couplings_are_rectangular():
    mha = _mha(7, kdim=5)
    c = couplings(mha)
    assert tuple(c.w_qk.shape) == (3, 5, 12)
    assert tuple(c.singular_values.shape) == (3, 5)
    with pytest.raises(ValueError, match="square couplings"):
        _ = c.symmetric
    x = torch.randn(4, 12, dtype=F64)
    ctx = torch.randn(6, 5, dtype=F64)
    _, weights = mha(
        x[None], ctx[None], torch.randn(1, 6, 5, dtype=F64), average_attn_weights=False
    )
    torch.testing.assert_close(c.ensemble(x, ctx).weights, weights[0])


def test_default_beta_is_inverse_sqrt_head_dim():
    c = couplings(torch.eye(8), torch.eye(8), num_heads=2)
    torch.testing.assert_close(c.beta, torch.full((2,), 1 / math.sqrt(4)))


def test_bad_input_is_rejected():
    w = torch.randn(8, 6)
    with pytest.raises(ValueError, match="same number of rows"):
        couplings(w, torch.randn(6, 6), num_heads=2)
    with pytest.raises(ValueError, match="num_heads must divide"):
        couplings(w, w, num_heads=3)
    with pytest.raises(ValueError, match="num_heads must be a positive integer"):
        couplings(w, w, num_heads=0)
    with pytest.raises(ValueError, match="beta must be positive"):
        couplings(w, w, num_heads=2, beta=-1.0)
    with pytest.raises(ValueError, match="beta must be finite"):
        couplings(w, w, num_heads=2, beta=float("inf"))
    with pytest.raises(ValueError, match="beta must be a float or have shape"):
        couplings(w, w, num_heads=2, beta=torch.ones(3))
    with pytest.raises(ValueError, match="b_q must have shape"):
        couplings(w, w, num_heads=2, b_q=torch.zeros(7))
    bad = w.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="w_q must be finite"):
        couplings(bad, w, num_heads=2)
    with pytest.raises(ValueError, match="w_k and num_heads are required"):
        couplings(w)
    with pytest.raises(ValueError, match="multi-head attention module"):
        couplings(nn.Linear(3, 3))
    c = couplings(w, w, num_heads=2)
    with pytest.raises(ValueError, match=r"x must be a floating tensor of shape \(\.\.\., N, 6\)"):
        c.project(torch.ones(3, 5))
