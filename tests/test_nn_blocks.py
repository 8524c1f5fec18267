"""Spin-model modules: causal masking, implicit vs unrolled gradients, gradcheck, bad input."""

from __future__ import annotations

import pytest
import torch

from spinformer.nn import (
    FreeEnergyAttention,
    MeanFieldAttention,
    SpinTransformer,
    SpinTransformerBlock,
    SpinTransformerConfig,
    TransformerBlock,
)
from spinformer.physics.saddle import saddle_magnetization

F64 = torch.float64
TIGHT = {"tol": 1e-12, "max_iter": 300}
#: the first spin block design: dot-product couplings, LayerNorm, m(0) = 0, out = x + W_O m
OLD = {"coupling": "dot", "norm": "layer", "start": "zero", "residual": "add"}

MODULES = {
    "mean_field_fixed_point": lambda causal: MeanFieldAttention(12, 2, causal=causal, **TIGHT),
    "mean_field_steps": lambda causal: MeanFieldAttention(12, 2, causal=causal, steps=3),
    "mean_field_learned": lambda causal: MeanFieldAttention(
        12, 2, causal=causal, couplings="learned", onsager="learned", max_len=8, **TIGHT
    ),
    "free_energy": lambda causal: FreeEnergyAttention(12, 2, causal=causal, tol=1e-12),
    "spin_fixed_point": lambda causal: SpinTransformerBlock(12, 2, causal=causal, **TIGHT),
    "spin_tap_fixed_point": lambda causal: SpinTransformerBlock(
        12, 2, order=2, causal=causal, **TIGHT
    ),
    "spin_steps": lambda causal: SpinTransformerBlock(12, 2, order=2, causal=causal, steps=3),
    "spin_old_fixed_point": lambda causal: SpinTransformerBlock(
        12, 2, causal=causal, **OLD, **TIGHT
    ),
    "spin_old_steps": lambda causal: SpinTransformerBlock(
        12, 2, order=2, causal=causal, steps=3, **OLD
    ),
    "spin_one_step": lambda causal: SpinTransformerBlock(12, 2, causal=causal, steps=1),
    "transformer": lambda causal: TransformerBlock(12, 2, causal=causal),
}


def _tokens(seed: int, b: int = 2, n: int = 6, d: int = 12) -> torch.Tensor:
    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_causal_outputs_ignore_future_tokens(name):
    torch.manual_seed(0)
    module = MODULES[name](True).double()
    x = _tokens(1)
    changed = x.clone()
    changed[:, 3:] = _tokens(2)[:, 3:]
    out, state = module(x, return_state=True)
    out2 = module(changed)
    torch.testing.assert_close(out[:, :3], out2[:, :3], rtol=0, atol=1e-9)
    assert float((out[:, 3:] - out2[:, 3:]).abs().max().detach()) > 1e-3  # the future matters later
    if state.converged is not None:
        assert bool(state.converged.all())


@pytest.mark.parametrize("name", sorted(MODULES))
def test_padding_tokens_do_not_affect_real_tokens(name):
    torch.manual_seed(0)
    module = MODULES[name](False).double()
    x = _tokens(3)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[:, 4:] = False
    changed = x.clone()
    changed[:, 4:] = 10 * _tokens(4)[:, 4:]
    torch.testing.assert_close(
        module(x, mask)[:, :4], module(changed, mask)[:, :4], rtol=0, atol=1e-9
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda implicit: SpinTransformerBlock(
            12, 2, order=2, tol=1e-13, max_iter=400, implicit=implicit, **OLD
        ),
        lambda implicit: SpinTransformerBlock(
            12, 2, order=1, tol=1e-13, max_iter=400, implicit=implicit
        ),
        lambda implicit: MeanFieldAttention(12, 2, tol=1e-13, max_iter=400, implicit=implicit),
    ],
    ids=["spin_block", "spin_block_naive", "mean_field"],
)
def test_implicit_gradients_equal_unrolled(make):
    torch.manual_seed(1)
    implicit = make(True).double()
    unrolled = make(False).double()
    unrolled.load_state_dict(implicit.state_dict())
    x = _tokens(5)
    grads = []
    for module in (implicit, unrolled):
        loss = (module(x) ** 2).sum()
        grads.append(torch.autograd.grad(loss, list(module.parameters())))
    for a, b in zip(*grads, strict=True):
        assert float((a - b).norm() / b.norm().clamp_min(1e-30)) < 1e-6


def test_fixed_point_equals_long_explicit_relaxation():
    torch.manual_seed(2)
    fixed = SpinTransformerBlock(12, 2, tol=1e-13, max_iter=400, **OLD).double()
    steps = SpinTransformerBlock(12, 2, steps=200, **OLD).double()
    steps.load_state_dict(fixed.state_dict())
    x = _tokens(6)
    torch.testing.assert_close(fixed(x), steps(x), rtol=1e-10, atol=1e-10)
    g_fixed = torch.autograd.grad(fixed(x).pow(2).sum(), fixed.query.weight)[0]
    g_steps = torch.autograd.grad(steps(x).pow(2).sum(), steps.query.weight)[0]
    assert float((g_fixed - g_steps).norm() / g_steps.norm()) < 1e-6


@pytest.mark.parametrize("name", sorted(MODULES))
def test_gradcheck(name):
    torch.manual_seed(3)
    module = MODULES[name](True).double()
    x = _tokens(7, b=1, n=3).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: module(t), (x,), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True
    )


def test_free_energy_attention_is_saddle_magnetization():
    """Autograd −∂F/∂h equals the closed form βV⁻¹h at the saddle (two routes)."""
    torch.manual_seed(4)
    module = FreeEnergyAttention(12, 2, beta=0.8, tol=1e-12).double()
    x = _tokens(8, b=1)
    _, state = module(x, return_state=True)
    field = module.field(x).reshape(1, 6, 2, 6).transpose(1, 2)
    from spinformer.physics.saddle import solve_saddle

    beta = state.beta.expand(1, 2)
    t = solve_saddle(state.couplings, field, beta, module.radius, tol=1e-12).solution
    closed = saddle_magnetization(state.couplings, field, beta, module.radius, t)
    torch.testing.assert_close(state.magnetization, closed, rtol=1e-9, atol=1e-10)
    assert state.free_energy.shape == (1,)
    torch.testing.assert_close(state.couplings, state.couplings.transpose(-1, -2))


def test_mean_field_tap_matches_its_equation():
    torch.manual_seed(5)
    module = MeanFieldAttention(12, 2, beta=1.2, **TIGHT).double()
    x = _tokens(9)
    _, state = module(x, return_state=True)
    m, j, r2 = state.magnetization, state.couplings, module.radius**2
    b = state.beta.reshape(1, 2, 1, 1)
    h = module.field(x).reshape(2, 6, 2, 6).transpose(1, 2)
    tangential = (r2 - (m * m).sum(-1, keepdim=True)) / (2 * r2)
    theta = h + j @ m - b * (6 / (2 * r2)) * m * ((j**2) @ tangential)
    norm2 = (theta**2).sum(-1, keepdim=True)
    expected = b * theta / (1 + torch.sqrt(1 + b * b * norm2 / r2))
    torch.testing.assert_close(m, expected, rtol=1e-10, atol=1e-10)


def test_transformer_block_couplings_match_torch_attention():
    torch.manual_seed(6)
    block = TransformerBlock(12, 2, causal=True).double()
    x = _tokens(10)
    _, state = block(x, return_state=True)
    q, k, _ = block.qkv(block.norm1(x)).chunk(3, -1)
    q = q.reshape(2, 6, 2, 6).transpose(1, 2)
    k = k.reshape(2, 6, 2, 6).transpose(1, 2)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k, torch.eye(6, dtype=F64).expand(2, 2, 6, 6), is_causal=True
    )
    torch.testing.assert_close(state.couplings, ref)


@pytest.mark.parametrize("block", ["spin", "transformer", "mean_field", "free_energy"])
def test_spin_transformer_heads_causality_and_training_step(block):
    torch.manual_seed(7)
    config = SpinTransformerConfig(
        vocab_size=11, max_len=8, d_model=12, n_heads=2, block=block, tol=1e-10, max_iter=200
    )
    model = SpinTransformer(config).double()
    tokens = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(0))
    logits = model(tokens)
    assert logits.shape == (2, 6, 11)
    changed = tokens.clone()
    changed[:, 4:] = (changed[:, 4:] + 1) % 11
    torch.testing.assert_close(model(changed)[:, :4], logits[:, :4], rtol=0, atol=1e-8)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), tokens.reshape(-1))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    classifier = SpinTransformer(
        config.replace(head="classify", num_classes=3, causal=False)
    ).double()
    assert classifier(tokens, torch.ones(2, 6, dtype=torch.bool)).shape == (2, 3)


def test_bad_input_named_errors():
    with pytest.raises(ValueError, match="head dimension"):
        SpinTransformerBlock(8, 4)  # d = 2
    with pytest.raises(ValueError, match="beta must be a positive"):
        MeanFieldAttention(12, 2, beta=0.0)
    with pytest.raises(ValueError, match="steps"):
        SpinTransformerBlock(12, 2, steps=0)
    block = SpinTransformerBlock(12, 2, causal=True)
    x = torch.randn(1, 4, 12)
    mask = torch.tensor([[False, True, True, True]])
    with pytest.raises(ValueError, match="no key"):
        block(x, mask)
    with pytest.raises(ValueError, match="x must be finite"):
        block(torch.full((1, 4, 12), float("nan")))
    with pytest.raises(ValueError, match="padding_mask"):
        block(x, torch.ones(1, 4))
    with pytest.raises(ValueError, match="block"):
        SpinTransformerConfig(vocab_size=5, max_len=4, block="rnn")
    with pytest.raises(ValueError, match="num_classes"):
        SpinTransformerConfig(vocab_size=5, max_len=4, head="classify")
    with pytest.raises(ValueError, match="tokens"):
        SpinTransformer(SpinTransformerConfig(vocab_size=5, max_len=4))(torch.tensor([[7]]))


def test_spin_transformer_gradcheck_through_embeddings():
    torch.manual_seed(8)
    config = SpinTransformerConfig(
        vocab_size=5, max_len=4, d_model=12, n_heads=2, n_layers=1, tol=1e-12, max_iter=300
    )
    model = SpinTransformer(config).double()
    tokens = torch.tensor([[0, 3, 1]])
    weight = model.embed.weight.detach().clone().requires_grad_(True)

    def logits(w):
        return torch.func.functional_call(model, {"embed.weight": w}, (tokens,))

    assert torch.autograd.gradcheck(logits, (weight,), atol=1e-5, rtol=1e-4, fast_mode=True)
