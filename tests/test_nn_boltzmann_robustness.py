"""BoltzmannAttention under bad input: loading, mask hints, empty inputs, half precision.

Each result is checked against torch's own ``nn.MultiheadAttention`` (same weights) or, for the
half-precision thermodynamics, against the same module in float64.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spinformer.nn import BoltzmannAttention

D, H = 8, 2


def _pair(seed: int = 0, dtype: torch.dtype = torch.float32, **kwargs):
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(D, H, batch_first=True, dtype=dtype, **kwargs).eval()
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    return mha, BoltzmannAttention.from_torch(mha).eval()


def _x(*shape: int, seed: int = 1, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("learn_beta", [False, True])
def test_rejected_beta_leaves_the_module_unchanged(learn_beta):
    mha, _ = _pair()
    ours = BoltzmannAttention.from_torch(mha, learn_beta=learn_beta).eval()
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    state = {k: v.clone() for k, v in ours.state_dict().items()}
    for key in state:  # a new set of weights that must not arrive
        state[key] = state[key] + 1.0
    if learn_beta:
        state["log_beta"] = torch.tensor([float("nan"), 0.0])
        match = r"state_dict\['log_beta'\] must be finite"
    else:
        state["head_beta"] = torch.tensor([-1.0, -1.0])
        match = r"state_dict\['head_beta'\] must be positive"
    with pytest.raises(ValueError, match=match):
        ours.load_state_dict(state)
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    # every path still gives torch's attention with the original weights (fused, weights, thermo)
    x = _x(2, 5, D)
    ref = mha(x, x, x, need_weights=False)[0]
    for need_weights, need_thermo in ((False, False), (True, False), (False, True)):
        out = ours(x, need_weights=need_weights, need_thermo=need_thermo)
        torch.testing.assert_close(out[0], ref, atol=1e-5, rtol=0)
        if need_thermo:
            assert bool((out[2].beta > 0).all())


def test_rejected_beta_inside_a_container_leaves_the_attention_unchanged():
    _, ours = _pair()
    model = nn.ModuleDict({"attention": ours})
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    state = model.state_dict()
    state = {k: v + 1.0 for k, v in state.items()}
    state["attention.head_beta"] = torch.tensor([1.0, -2.0])
    with pytest.raises(ValueError, match="must be positive"):
        model.load_state_dict(state)
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_failed_load_of_any_kind_is_rolled_back():
    _, ours = _pair()
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    state = {k: v + 1.0 for k, v in ours.state_dict().items()}
    state["head_beta"] = torch.tensor([3.0, 3.0])
    state["out_proj.weight"] = torch.zeros(D, D + 1)  # wrong shape: torch raises at the end
    with pytest.raises(RuntimeError, match="size mismatch"):
        ours.load_state_dict(state)
    for key, value in ours.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert ours._uniform_beta == pytest.approx(before["head_beta"][0].item())


@pytest.mark.parametrize("parameter", ["in_proj_weight", "in_proj_bias", "out_proj.bias"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_from_torch_refuses_non_finite_weights(parameter, bad):
    mha, _ = _pair()
    with torch.no_grad():
        mha.get_parameter(parameter).view(-1)[3] = bad
    with pytest.raises(ValueError, match=f"module.{parameter} must be finite"):
        BoltzmannAttention.from_torch(mha)


# ------------------------------------------------------------------------------- is_causal


def _causal(tgt: int, src: int, kind: str, batch_heads: int | None = None) -> torch.Tensor:
    excluded = torch.ones(tgt, src, dtype=torch.bool).triu(1)
    mask = excluded if kind == "bool" else torch.zeros(tgt, src).masked_fill(excluded, -torch.inf)
    return mask if batch_heads is None else mask.expand(batch_heads, tgt, src).clone()


@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("padding", [False, True])
def test_causal_hint_gives_torch_result_on_every_path(kind, per_head, padding):
    mha, ours = _pair()
    x = _x(3, 6, D)
    mask = _causal(6, 6, kind, 3 * H if per_head else None)
    extra = {}
    if padding:
        kpm = torch.zeros(3, 6, dtype=torch.bool)
        kpm[1, 4:] = True
        if kind == "float":  # torch wants both masks of one type
            kpm = torch.zeros(3, 6).masked_fill(kpm, -torch.inf)
        extra["key_padding_mask"] = kpm
    for torch_weights in (True, False):
        ref = mha(x, x, x, attn_mask=mask, is_causal=True, need_weights=torch_weights, **extra)[0]
        for need_weights in (True, False):
            for need_thermo in (True, False):
                out = ours(
                    x,
                    attn_mask=mask,
                    is_causal=True,
                    need_weights=need_weights,
                    need_thermo=need_thermo,
                    **extra,
                )[0]
                torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_causal_hint_in_cross_attention_is_top_left_as_in_sdpa():
    mha, ours = _pair()
    q, kv = _x(2, 4, D), _x(2, 6, D, seed=3)
    mask = _causal(4, 6, "bool")
    ref = mha(q, kv, kv, attn_mask=mask, need_weights=True)[0]  # the mask itself, no hint
    for need_weights in (True, False):
        out = ours(q, kv, kv, attn_mask=mask, is_causal=True, need_weights=need_weights)[0]
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_is_causal_without_mask_is_the_causal_mask():
    mha, ours = _pair()
    x = _x(2, 5, D)
    ref = mha(x, x, x, attn_mask=_causal(5, 5, "bool"), need_weights=True)[0]
    for need_weights in (True, False):
        out = ours(x, is_causal=True, need_weights=need_weights)[0]
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "mask",
    [
        torch.randn(5, 5, generator=torch.Generator().manual_seed(0)),  # additive, not causal
        torch.ones(5, 5, dtype=torch.bool).triu(2),  # allows one future key
        torch.ones(5, 5, dtype=torch.bool).triu(1) | torch.eye(5, dtype=torch.bool).roll(1, 0),
        torch.zeros(5, 5).masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), -1e9),
    ],
)
def test_wrong_causal_hint_is_an_error_on_every_path(mask):
    # torch itself gives different outputs here for need_weights=True and False
    _, ours = _pair()
    x = _x(2, 5, D)
    for need_weights in (True, False):
        for need_thermo in (True, False):
            with pytest.raises(ValueError, match="attn_mask is not the causal mask"):
                ours(
                    x, attn_mask=mask, is_causal=True, need_weights=need_weights,
                    need_thermo=need_thermo,
                )  # fmt: skip


# ------------------------------------------------------------------------------- empty inputs


@pytest.mark.parametrize("need", [(False, False), (True, False), (False, True), (True, True)])
def test_no_keys_is_the_fully_masked_row_error(need):
    _, ours = _pair()
    need_weights, need_thermo = need
    with pytest.raises(ValueError, match="no key to attend to"):
        ours(_x(2, 5, D), torch.zeros(2, 0, D), need_weights=need_weights, need_thermo=need_thermo)


@pytest.mark.parametrize("shapes", [((0, 5), (0, 0)), ((2, 0), (2, 0)), ((0, 5), (0, 3))])
@pytest.mark.parametrize("need", [(False, False), (True, False), (False, True), (True, True)])
def test_empty_batch_or_queries_give_torch_shapes(shapes, need):
    mha, ours = _pair()
    (b, tgt), (_, src) = shapes
    q, kv = torch.zeros(b, tgt, D), torch.zeros(b, src, D)
    need_weights, need_thermo = need
    result = ours(q, kv, kv, need_weights=need_weights, need_thermo=need_thermo)
    ref = mha(q, kv, kv, need_weights=need_weights)
    assert result[0].shape == ref[0].shape
    if need_weights:
        assert result[1].shape == ref[1].shape
    if need_thermo:
        assert result[2].free_energy.shape == (b, H, tgt)


# ------------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("argument", ["query", "key", "value"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_input_of_another_dtype_is_a_named_error(argument, dtype):
    _, ours = _pair()
    inputs = {"query": _x(2, 5, D), "key": _x(2, 5, D), "value": _x(2, 5, D)}
    inputs[argument] = inputs[argument].to(dtype)
    with pytest.raises(ValueError, match=f"{argument} must have the module's dtype torch.float32"):
        ours(**inputs)


@pytest.mark.parametrize(("scale", "beta"), [(100.0, None), (1.0, 1e-6), (30.0, 3.0)])
@torch.no_grad()
def test_half_precision_thermodynamics_match_float64(scale, beta):
    # float16 scores at 100 x the inputs overflow (C was NaN); F = -ln Z / beta at beta = 1e-6
    # is -1.6e6, beyond float16 (F was -inf): the statistics are accumulated in float32
    mha, _ = _pair(seed=4)
    half = BoltzmannAttention.from_torch(mha.half(), beta=beta).eval()
    # the same module in float64: the same (float16-rounded) weights and β
    exact = BoltzmannAttention.from_torch(mha.double(), beta=half.beta.double()).eval()
    x = (scale * _x(2, 7, D, seed=5)).half()
    for need_weights in (False, True):
        out, weights, thermo = half(x, need_weights=need_weights, need_thermo=True)
        ref, ref_weights, ref_thermo = exact(
            x.double(), need_weights=need_weights, need_thermo=True
        )
        assert out.dtype == torch.float16
        assert thermo.free_energy.dtype == torch.float32
        scale_out = float(ref.detach().abs().max())
        torch.testing.assert_close(out.double(), ref, rtol=2e-3, atol=2e-3 * scale_out)
        if need_weights:
            assert weights.dtype == torch.float16
            torch.testing.assert_close(weights.double(), ref_weights, rtol=0, atol=1e-3)
        for field in ("log_partition", "free_energy", "energy", "entropy", "heat_capacity"):
            ours, want = getattr(thermo, field).double(), getattr(ref_thermo, field)
            assert bool(torch.isfinite(ours).all()), field
            torch.testing.assert_close(
                ours, want, rtol=1e-4, atol=1e-4 * (1.0 + float(want.abs().max())), msg=field
            )


def test_overflowing_inputs_are_an_error_not_nan():
    _, ours = _pair()
    with pytest.raises(ValueError, match=r"too large for torch\.float32"):
        ours(1e30 * _x(2, 5, D), need_weights=False)


@pytest.mark.parametrize(
    ("value", "got"),
    [(torch.ones(2, 5, D, dtype=torch.long), "a torch.int64 tensor of shape (2, 5, 8)"),
     (torch.ones(D), "a torch.float32 tensor of shape (8,)"), ([1.0, 2.0], "list")],
)  # fmt: skip
def test_query_that_is_not_a_float_tensor_is_described_not_printed(value, got):
    _, ours = _pair()
    with pytest.raises(
        ValueError, match=r"query must be a floating 2-D or 3-D tensor, got "
    ) as err:
        ours(value)
    assert str(err.value).endswith(got)
