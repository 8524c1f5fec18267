"""The spin block's design options, the block-kind registry, matched sizes, and the training
experiments at a tiny scale (the comparison and footnote 9's alignment metric)."""

from __future__ import annotations

import typing

import pytest
import torch

from spinformer.experiments.training import (
    MODEL_VARIANTS,
    TASK_SETTINGS,
    _train_config,
    alignment,
    training_comparison,
)
from spinformer.nn import SpinTransformer, SpinTransformerBlock, SpinTransformerConfig
from spinformer.nn._spin import (
    HeadRMSNorm,
    cosine_couplings,
    cosine_queries_keys,
    rotary,
    split_heads,
)
from spinformer.nn.model import BLOCK_FACTORIES
from spinformer.train import MODELS, TrainConfig, build_model, make_task, parameter_count

F64 = torch.float64


def _tokens(seed: int, b: int = 2, n: int = 6, d: int = 12) -> torch.Tensor:
    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _coupling_grads(start: str) -> list[torch.Tensor | None]:
    torch.manual_seed(0)
    block = SpinTransformerBlock(12, 2, steps=1, start=start, causal=True).double()
    block(_tokens(0)).square().sum().backward()
    return [block.query.weight.grad, block.key.weight.grad]


def test_one_step_from_zero_gives_the_couplings_no_gradient_a_learned_start_does():
    # m(1) = φ(h + J·0) = φ(h): J drops out; from m(0) = φ(W_V x̂) it does not
    assert all(g is None or float(g.abs().max()) == 0.0 for g in _coupling_grads("zero"))
    assert all(g is not None and float(g.abs().max()) > 0.0 for g in _coupling_grads("learned"))


def test_cosine_couplings_are_a_boltzmann_distribution_of_cosine_energies():
    q, k = _tokens(1).reshape(2, 6, 2, 6).transpose(1, 2), _tokens(2).reshape(2, 6, 2, 6)
    k = k.transpose(1, 2)
    tau = torch.tensor([0.7, 3.0], dtype=F64)
    allowed = torch.ones(6, 6, dtype=torch.bool).tril()[None, None]
    j = cosine_couplings(q, k, tau, allowed)
    cos = torch.einsum("bhid,bhjd->bhij", q, k) / (
        q.norm(dim=-1)[..., :, None] * k.norm(dim=-1)[..., None, :]
    )
    weights = torch.exp(tau[:, None, None] * cos) * allowed
    torch.testing.assert_close(j, weights / weights.sum(-1, keepdim=True), rtol=1e-12, atol=0)
    assert float(j.masked_select(~allowed.expand_as(j)).abs().max()) == 0.0
    # a distribution per row, and no sharper than e^{2τ} between two allowed keys
    torch.testing.assert_close(j.sum(-1), torch.ones(2, 2, 6, dtype=F64))
    ratio = j[..., :, None] / j[..., None, :]
    pairs = allowed[..., :, None] & allowed[..., None, :]
    bound = torch.exp(2 * tau)[:, None, None, None] * (1 + 1e-12)
    assert bool((ratio.masked_fill(~pairs, 0.0) <= bound).all())
    # and scale-free in q and k
    torch.testing.assert_close(cosine_couplings(5 * q, 0.1 * k, tau, allowed), j)


def test_rms_norm_gain_puts_each_head_on_the_spin_radius():
    block = SpinTransformerBlock(24, 3, norm="rms").double()
    heads = split_heads(block.norm(_tokens(3, d=24) * 7.0), 3)
    torch.testing.assert_close(
        heads.norm(dim=-1), torch.full(heads.shape[:-1], block.radius, dtype=F64)
    )
    assert isinstance(block.norm, HeadRMSNorm)


@pytest.mark.parametrize("causal", [True, False])
def test_one_step_fast_path_equals_the_general_relaxation(causal):
    torch.manual_seed(4)
    block = SpinTransformerBlock(12, 2, steps=1, causal=causal, rope=True).double()
    x = _tokens(5)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    fast = block(x, mask)
    general, state = block(x, mask, return_state=True)  # forms J and relaxes one step
    torch.testing.assert_close(fast, general, rtol=1e-12, atol=1e-12)
    assert state.couplings is not None and int(state.iterations.max()) == 1


@pytest.mark.parametrize("residual", ["field", "magnetization"])
def test_one_step_fast_path_gradients_equal_the_general_relaxation(residual):
    # the closed-form backward of the fast path against autograd through the general path
    torch.manual_seed(5)
    block = SpinTransformerBlock(12, 2, steps=1, causal=True, rope=True, residual=residual)
    block = block.double()
    x = _tokens(7)
    if residual == "magnetization":  # a stream of magnetizations, |x| < R per head
        x = 0.5 * block.radius * torch.tanh(x)
    x.requires_grad_()
    grads = []
    for return_state in (False, True):  # fast path, then the general path
        out = block(x, return_state=return_state)
        out = out[0] if return_state else out
        params = [x, *block.parameters()]
        grads.append(torch.autograd.grad(out.sin().sum(), params))
    for fast, general in zip(*grads, strict=True):
        torch.testing.assert_close(fast, general, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("norm", ["rms", "layer"])
def test_stacked_one_step_blocks_gradients_equal_the_general_relaxation(norm):
    # two fused nodes in one backward (their scratch buffers reused by the second) and blocks
    # whose MLP carries a hook (module calls instead of the node), against the general path
    torch.manual_seed(8)
    first = SpinTransformerBlock(12, 2, steps=1, causal=True, rope=True, norm=norm)
    second = SpinTransformerBlock(12, 2, steps=1, causal=True, norm=norm, residual="magnetization")
    blocks = [first.double(), second.double()]
    x = _tokens(9).requires_grad_()
    params = [x, *blocks[0].parameters(), *blocks[1].parameters()]

    def grads(return_state: bool) -> tuple[torch.Tensor, ...]:
        out = x
        for block in blocks:
            out = block(out, return_state=return_state)
            out = out[0] if return_state else out
        return torch.autograd.grad(out.sin().sum(), params)

    assert blocks[0]._fused(x)
    fused, general = grads(False), grads(True)
    for got, want in zip(fused, general, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    seen = []
    blocks[1].ffn.register_forward_hook(lambda module, args, out: seen.append(out))
    assert not blocks[1]._fused(x)  # a hooked MLP runs as modules: the hook sees its output
    for got, want in zip(grads(False), general, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert len(seen) == 1


@pytest.mark.parametrize("padding", [False, True])
def test_fused_one_step_backward_passes_gradcheck(padding):
    # the single autograd node of the cosine one step (projections to φ) against finite
    # differences in every input and parameter, with and without padding
    torch.manual_seed(6)
    block = SpinTransformerBlock(8, 2, steps=1, causal=True, rope=True, residual="magnetization")
    block = block.double()
    x = (0.5 * block.radius * torch.tanh(_tokens(8, n=5, d=8))).requires_grad_()
    assert block._fused(x)
    mask = None
    if padding:
        mask = torch.ones(2, 5, dtype=torch.bool)
        mask[1, 3:] = False
    names = [name for name, _ in block.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in block.parameters()]

    def run(x, *values):
        return torch.func.functional_call(block, dict(zip(names, values, strict=True)), (x, mask))

    torch.autograd.gradcheck(run, (x, *params))


def test_head_rms_norm_backward_is_the_autograd_backward():
    g = torch.Generator().manual_seed(8)
    norm = HeadRMSNorm(3, 4, 1.0).double()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(12, generator=g, dtype=F64))
    x = torch.randn(2, 5, 12, generator=g, dtype=F64, requires_grad=True)
    torch.autograd.gradcheck(norm, (x,))
    # against torch's RMSNorm per head, times the gain
    unfused = (
        torch.nn.functional.rms_norm(
            x.unflatten(-1, (3, 4)), (4,), eps=torch.finfo(F64).eps
        ).flatten(-2)
        * norm.weight
    )
    torch.testing.assert_close(norm(x), unfused, rtol=1e-14, atol=1e-14)
    gy = torch.randn(2, 5, 12, generator=g, dtype=F64)
    expected = torch.autograd.grad(unfused, (x, norm.weight), gy)
    torch.testing.assert_close(torch.autograd.grad(norm(x), (x, norm.weight), gy), expected)


@pytest.mark.parametrize("rope", [False, True])
def test_cosine_queries_keys_give_the_cosine_couplings_with_their_backward(rope):
    g = torch.Generator().manual_seed(9)
    qk = torch.randn(2, 5, 6, 4, generator=g, dtype=F64, requires_grad=True)  # (B, N, 2H, d)
    tau = torch.rand(3, generator=g, dtype=F64).add(0.5).requires_grad_()
    torch.autograd.gradcheck(lambda t, s: cosine_queries_keys(t, s, rope), (qk, tau))
    q, k = (t.transpose(1, 2) for t in cosine_queries_keys(qk, tau, rope))
    scores = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
    q0, k0 = (t.transpose(1, 2) for t in qk.chunk(2, dim=2))
    if rope:
        q0, k0 = rotary(q0), rotary(k0)
    torch.testing.assert_close(scores, cosine_couplings(q0, k0, tau, None), rtol=1e-12, atol=0)


def test_magnetization_stream_block_with_no_other_field_returns_its_input():
    # m = φ(φ⁻¹(x)) when W_F, the FFN and the learned start contribute nothing
    block = SpinTransformerBlock(12, 2, steps=1, ffn_field=False, residual="magnetization").double()
    with torch.no_grad():
        block.field.weight.zero_()
        block.value.weight.zero_()
    x = split_heads(_tokens(6), 2)
    x = (0.9 * block.radius * x / x.norm(dim=-1, keepdim=True)).transpose(1, 2).reshape(2, 6, 12)
    torch.testing.assert_close(block(x), x, rtol=1e-12, atol=1e-12)


def test_block_kinds_come_from_one_registry():
    kinds = tuple(BLOCK_FACTORIES)
    assert set(MODELS) == set(kinds)
    assert set(typing.get_args(typing.get_type_hints(TrainConfig)["model"])) == set(kinds)
    hints = typing.get_type_hints(SpinTransformerConfig)
    assert set(typing.get_args(hints["block"])) == set(kinds)
    for kind in kinds:
        config = SpinTransformerConfig(vocab_size=7, max_len=5, d_model=12, n_heads=2, block=kind)
        assert SpinTransformer(config)(torch.tensor([[1, 2, 3]])).shape == (1, 3, 7)
    with pytest.raises(ValueError, match="block must be one of"):
        SpinTransformerConfig(vocab_size=7, max_len=5, block="rnn")
    with pytest.raises(ValueError, match="rotary"):
        SpinTransformerConfig(vocab_size=7, max_len=5, block="transformer", position="rotary")


@pytest.mark.parametrize("task", sorted(TASK_SETTINGS))
def test_compared_models_have_matched_parameter_counts(task):
    pytest.importorskip("sklearn") if task == "digits" else None
    counts = {}
    for model in MODEL_VARIANTS:
        if model in ("peer", "spin_best_fixed_point"):
            # the peer: an outside recipe at its own size; the best design's fixed point has
            # neither W_V (a stationary state has no start) nor W_O (a magnetization stream):
            # about 0.9x, smaller, so the comparison's table states its ratio
            continue
        config = _train_config(task, model, 0, 10, {})
        counts[model] = parameter_count(build_model(config, make_task(config)))
    base = counts["transformer"]
    assert {m: n for m, n in counts.items() if abs(n / base - 1) > 0.05} == {}


def test_alignment_on_constructed_cases():
    c = torch.randn(1000, generator=torch.Generator().manual_seed(7), dtype=F64)
    r2, cosine = alignment(c, 3.0 * c)
    assert r2 == pytest.approx(1.0, abs=1e-12) and cosine == pytest.approx(1.0, abs=1e-12)
    r2, _ = alignment(c, -2.0 * c + 5.0)  # an affine image: R² = 1
    assert r2 == pytest.approx(1.0, abs=1e-12)
    a = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=F64)
    b = torch.tensor([0.0, 1.0, 0.0, -1.0], dtype=F64)
    assert alignment(a, b)[1] == pytest.approx(0.0, abs=1e-15)  # orthogonal: cosine 0
    # Pearson: a = (1,0,1,0), b' = (1,1,0,0) are uncorrelated after centring: R² = 0
    assert alignment(a, torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=F64))[0] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="one shape"):
        alignment(a, b[:3])


def test_comparison_experiment_at_a_tiny_scale(monkeypatch):
    monkeypatch.delenv("SPINFORMER_PEER_PATH", raising=False)
    result = training_comparison(
        tasks=("recall",), models=("transformer", "spin_best", "peer"), seeds=1, max_steps=3
    )
    rows = result.tables["comparison"]
    assert [r["model"] for r in rows] == ["vanilla transformer", "spin block, best design, K=1"]
    assert all(abs(r["vs vanilla"] - 1) <= 0.05 and r["tokens/s"] > 0 for r in rows)
    assert any("SPINFORMER_PEER_PATH" in note for note in result.notes)  # skipped, with why
    assert "loss_curves" in result.figures


def test_rotary_scores_depend_on_relative_positions_only():
    from spinformer.nn._spin import rotary

    g = torch.Generator().manual_seed(8)
    q, k = torch.randn(1, 1, 1, 8, generator=g, dtype=F64), torch.randn(1, 1, 1, 8, generator=g)
    q_seq, k_seq = q.expand(1, 1, 7, 8), k.to(F64).expand(1, 1, 7, 8)
    scores = rotary(q_seq) @ rotary(k_seq).transpose(-1, -2)  # same q and k at every position
    for shift in range(-6, 7):
        diagonal = torch.diagonal(scores[0, 0], offset=shift)
        torch.testing.assert_close(diagonal, diagonal[:1].expand_as(diagonal))
    torch.testing.assert_close(rotary(q_seq).norm(dim=-1), q_seq.norm(dim=-1))  # a rotation
