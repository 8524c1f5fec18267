"""BoltzmannAttention is nn.MultiheadAttention (batch_first) plus β and thermodynamics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spinformer.attention import couplings, ensemble
from spinformer.nn import BoltzmannAttention

F32, F64 = torch.float32, torch.float64


def _pair(dtype, seed=0, dim=16, heads=4, bias=True, kdim=None, vdim=None, dropout=0.0):
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(
        dim, heads, dropout=dropout, bias=bias, kdim=kdim, vdim=vdim, batch_first=True, dtype=dtype
    )
    if bias:
        with torch.no_grad():
            mha.in_proj_bias.normal_()
            mha.out_proj.bias.normal_()
    return mha.eval(), BoltzmannAttention.from_torch(mha).eval()


def _masks(batch, tgt, src, kind, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = {}
    if "padding" in kind:
        kpm = torch.zeros(batch, src, dtype=torch.bool)
        kpm[0, src - 2 :] = True
        kpm[-1, src - 1 :] = True
        out["key_padding_mask"] = kpm
    if "causal" in kind:
        out["attn_mask"] = torch.ones(tgt, src, dtype=torch.bool).triu(1)
    if "additive" in kind:
        out["attn_mask"] = torch.randn(tgt, src, generator=g)
    if "per-head" in kind:
        m = torch.rand(batch * 4, tgt, src, generator=g) < 0.3
        m[..., 0] = False
        out["attn_mask"] = m
    return out


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize(
    "kind", ["none", "padding", "causal", "padding+causal", "additive", "per-head", "is_causal"]
)
def test_outputs_and_weights_equal_torch(dtype, kind):
    mha, ours = _pair(dtype)
    x = torch.randn(3, 7, 16, generator=torch.Generator().manual_seed(2), dtype=dtype)
    masks = _masks(3, 7, 7, kind)
    if kind == "is_causal":
        masks = {"attn_mask": torch.ones(7, 7, dtype=torch.bool).triu(1), "is_causal": True}
    if "attn_mask" in masks and masks["attn_mask"].is_floating_point():
        masks["attn_mask"] = masks["attn_mask"].to(dtype)
    atol = 1e-5 if dtype == F32 else 1e-12
    for need_weights in (True, False):
        for average in (True, False):
            ref, ref_w = mha(
                x, x, x, need_weights=need_weights, average_attn_weights=average, **masks
            )
            out, w = ours(x, need_weights=need_weights, average_attn_weights=average, **masks)
            torch.testing.assert_close(out, ref, atol=atol, rtol=0)
            if need_weights:
                torch.testing.assert_close(w, ref_w, atol=atol, rtol=0)
            else:
                assert w is None and ref_w is None


@pytest.mark.parametrize("dtype", [F32, F64])
def test_cross_attention_unbatched_and_sequence_first(dtype):
    mha, ours = _pair(dtype, kdim=5, vdim=3)
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 6, 16, generator=g, dtype=dtype)
    k = torch.randn(2, 9, 5, generator=g, dtype=dtype)
    v = torch.randn(2, 9, 3, generator=g, dtype=dtype)
    atol = 1e-5 if dtype == F32 else 1e-12
    ref, ref_w = mha(q, k, v)
    out, w = ours(q, k, v)
    torch.testing.assert_close(out, ref, atol=atol, rtol=0)
    torch.testing.assert_close(w, ref_w, atol=atol, rtol=0)
    ref, ref_w = mha(q[0], k[0], v[0], need_weights=True)  # unbatched
    out, w = ours(q[0], k[0], v[0])
    torch.testing.assert_close(out, ref, atol=atol, rtol=0)
    torch.testing.assert_close(w, ref_w, atol=atol, rtol=0)
    seq_first = BoltzmannAttention.from_torch(mha, batch_first=False)
    out, _ = seq_first(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1))
    torch.testing.assert_close(out.transpose(0, 1), mha(q, k, v)[0], atol=atol, rtol=0)


def test_key_value_default_to_query_and_no_bias():
    mha, ours = _pair(F64, bias=False)
    x = torch.randn(2, 5, 16, dtype=F64)
    torch.testing.assert_close(ours(x)[0], mha(x, x, x)[0])
    memory = torch.randn(2, 8, 16, dtype=F64)
    torch.testing.assert_close(ours(x, memory)[0], mha(x, memory, memory)[0])


def test_gradients_equal_torch():
    mha, ours = _pair(F64, seed=4)
    mha.train()
    ours.train()
    x = torch.randn(2, 6, 16, dtype=F64)
    kpm = torch.zeros(2, 6, dtype=torch.bool)
    kpm[1, 4:] = True
    mha(x, x, x, key_padding_mask=kpm, need_weights=False)[0].pow(2).sum().backward()
    ours(x, key_padding_mask=kpm, need_weights=False)[0].pow(2).sum().backward()
    for (name, p), (_, r) in zip(ours.named_parameters(), mha.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, r.grad, msg=name)


def test_state_dicts_are_interchangeable():
    mha, ours = _pair(F64, seed=5)
    fresh = nn.MultiheadAttention(16, 4, batch_first=True, dtype=F64)
    state = {k: v for k, v in ours.state_dict().items() if k != "head_beta"}
    fresh.load_state_dict(state)
    x = torch.randn(1, 4, 16, dtype=F64)
    torch.testing.assert_close(fresh(x, x, x)[0], ours(x)[0])
    assert set(ours.state_dict()) == set(mha.state_dict()) | {"head_beta"}


def test_beta_is_the_scale_of_the_dot_products():
    # β·√d_head rescales the query rows of W_Q and b_Q (folded into a module at the default β)
    mha, _ = _pair(F64, seed=6)
    x = torch.randn(2, 5, 16, dtype=F64)
    betas = torch.tensor([0.2, 0.9, 1.5, 3.0], dtype=F64)
    for beta in (0.7, betas):
        ours = BoltzmannAttention.from_torch(mha, beta=beta)
        scaled = BoltzmannAttention.from_torch(mha)
        factor = (torch.as_tensor(beta, dtype=F64) * math.sqrt(4)).expand(4).repeat_interleave(4)
        with torch.no_grad():
            scaled.in_proj_weight[:16] *= factor[:, None]
            scaled.in_proj_bias[:16] *= factor
        for need_weights in (True, False):
            out, w = ours(x, need_weights=need_weights)
            ref, ref_w = scaled(x, need_weights=need_weights)
            torch.testing.assert_close(out, ref)
            if need_weights:
                torch.testing.assert_close(w, ref_w)


def test_fast_path_calls_sdpa_with_scale_beta(monkeypatch):
    calls = []
    original = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    _, ours = _pair(F32, seed=7)
    x = torch.randn(2, 5, 16)
    ours(x, need_weights=False)
    assert calls[-1]["scale"] == pytest.approx(0.5)  # 1/√d_head, d_head = 4
    ours.set_beta(1.7)
    ours(x, need_weights=False, is_causal=True)
    assert calls[-1]["scale"] == pytest.approx(1.7) and calls[-1]["is_causal"]
    ours.set_beta(torch.tensor([1.0, 2.0, 3.0, 4.0]))  # per head: folded into the queries
    ours(x, need_weights=False)
    assert calls[-1]["scale"] == 1.0
    count = len(calls)
    ours(x, need_weights=True)
    ours(x, need_weights=False, need_thermo=True)
    assert len(calls) == count  # the weights/thermo paths do not use SDPA


def test_learnable_beta_gets_gradients_and_stays_positive():
    _, base = _pair(F32, seed=8)
    ours = BoltzmannAttention(16, 4, learn_beta=True, beta=0.3)
    ours.load_state_dict(base.state_dict(), strict=False)
    x = torch.randn(2, 5, 16)
    out, _, thermo = ours(x, need_weights=False, need_thermo=True)
    (out.sum() + thermo.entropy.sum()).backward()
    assert ours.log_beta.grad is not None and bool((ours.log_beta.grad != 0).all())
    torch.testing.assert_close(ours.beta.detach(), torch.full((4,), 0.3))
    fast, _ = ours(x, need_weights=False)
    torch.testing.assert_close(fast, out)


@pytest.mark.parametrize("masked", [False, True])
def test_thermodynamics_equal_the_ensemble_route(masked):
    _, ours = _pair(F64, seed=9)
    ours.set_beta(torch.tensor([0.3, 0.6, 1.2, 2.4], dtype=F64))
    x = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(10), dtype=F64)
    kwargs = {}
    allowed = None
    if masked:
        kpm = torch.zeros(2, 6, dtype=torch.bool)
        kpm[0, 4:] = True
        kwargs = {"key_padding_mask": kpm, "is_causal": True}
        allowed = (~kpm)[:, None, None, :] & torch.ones(6, 6, dtype=torch.bool).tril()
    c = couplings(ours)
    reference = c.ensemble(x, mask=allowed)
    for grad in (True, False):  # differentiable kernel and in-place inference kernel
        with torch.set_grad_enabled(grad):
            out, w, thermo = ours(
                x, need_weights=True, average_attn_weights=False, need_thermo=True, **kwargs
            )
            fast_out, _, fast_thermo = ours(x, need_weights=False, need_thermo=True, **kwargs)
        torch.testing.assert_close(w, reference.weights)
        torch.testing.assert_close(fast_out, out)
        for name in ("log_partition", "free_energy", "energy", "entropy", "heat_capacity"):
            torch.testing.assert_close(getattr(thermo, name), getattr(reference, name))
            torch.testing.assert_close(getattr(fast_thermo, name), getattr(reference, name))
    assert tuple(thermo.entropy.shape) == (2, 4, 6)
    # unbatched: (H, L)
    _, _, single = ours(x[1], need_thermo=True, need_weights=False)
    torch.testing.assert_close(single.entropy, ensemble(*c.project(x[1]), c.beta).entropy)


def test_eval_ignores_dropout_and_train_applies_it():
    mha, ours = _pair(F32, seed=11, dropout=0.5)
    x = torch.randn(2, 5, 16)
    torch.testing.assert_close(ours(x)[0], mha(x, x, x)[0])
    ours.train()
    torch.manual_seed(0)
    a = ours(x, need_weights=False)[0]
    assert float((a - mha(x, x, x)[0]).detach().abs().max()) > 1e-3


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="num_heads must divide embed_dim"):
        BoltzmannAttention(10, 3)
    with pytest.raises(ValueError, match="beta must be positive"):
        BoltzmannAttention(8, 2, beta=0.0)
    with pytest.raises(ValueError, match="beta must be finite"):
        BoltzmannAttention(8, 2, beta=float("nan"))
    with pytest.raises(ValueError, match="beta must be a float or have shape"):
        BoltzmannAttention(8, 2, beta=torch.ones(3))
    with pytest.raises(ValueError, match="dropout"):
        BoltzmannAttention(8, 2, dropout=1.0)
    with pytest.raises(ValueError, match="add_bias_kv"):
        BoltzmannAttention.from_torch(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    ours = BoltzmannAttention(8, 2)
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="embed_dim=8"):
        ours(torch.randn(2, 5, 6))
    with pytest.raises(ValueError, match="kdim=8"):
        ours(x, torch.randn(2, 5, 4))
    with pytest.raises(ValueError, match="same source"):
        ours(x, torch.randn(2, 5, 8), torch.randn(2, 4, 8))
    bad = x.clone()
    bad[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="query must be finite"):
        ours(bad, need_weights=False)
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        ours(x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask must have shape"):
        ours(x, attn_mask=torch.zeros(4, 5, dtype=torch.bool))
    kpm = torch.zeros(2, 5, dtype=torch.bool)
    kpm[1] = True
    with pytest.raises(ValueError, match="fully masked row"):
        ours(x, key_padding_mask=kpm, need_weights=False)
    with pytest.raises(ValueError, match="must all be batched"):
        ours(x, torch.randn(5, 8))
