"""Spin modules at the edges: empty batches and sequences, foreign dtypes, overflowing tokens.

An empty batch (B = 0) or sequence (N = 0) is a valid input for torch's attention, which returns
the empty output of the same shape; every module here does the same (and its backward runs).
Errors name what the user passed (``x``, ``tokens``), never an internal tensor.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from spinformer.nn import (
    AttentionBlock,
    FreeEnergyAttention,
    MeanFieldAttention,
    SpinTransformer,
    SpinTransformerBlock,
    SpinTransformerConfig,
    TransformerBlock,
)

D, H = 12, 2
MODULES = {
    "mean_field_fixed_point": lambda causal: MeanFieldAttention(D, H, causal=causal),
    "mean_field_steps": lambda causal: MeanFieldAttention(D, H, causal=causal, steps=3),
    "mean_field_learned": lambda causal: MeanFieldAttention(
        D, H, causal=causal, couplings="learned", onsager="learned", max_len=8
    ),
    "free_energy": lambda causal: FreeEnergyAttention(D, H, causal=causal),
    "spin_fixed_point": lambda causal: SpinTransformerBlock(D, H, causal=causal),
    "spin_steps": lambda causal: SpinTransformerBlock(D, H, order=2, causal=causal, steps=3),
    "transformer": lambda causal: TransformerBlock(D, H, causal=causal),
    "attention_block": lambda causal: AttentionBlock(MeanFieldAttention(D, H, causal=causal), D),
}
EMPTY = [(0, 5), (2, 0), (0, 0)]


def _torch_output_shape(batch: int, n: int) -> tuple[int, ...]:
    """What torch's own attention returns for the same input."""
    x = torch.zeros(batch, n, D)
    out, _ = nn.MultiheadAttention(D, H, batch_first=True)(x, x, x)
    return tuple(out.shape)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", EMPTY)
@pytest.mark.parametrize("name", sorted(MODULES))
def test_empty_input_gives_the_empty_output(name, shape, causal):
    torch.manual_seed(0)
    module = MODULES[name](causal)
    x = torch.zeros(*shape, D, requires_grad=True)
    mask = torch.ones(shape, dtype=torch.bool)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no solver warning for an empty system
        out, state = module(x, mask, return_state=True)
        out.sum().backward()
    assert tuple(out.shape) == _torch_output_shape(*shape)
    assert x.grad is not None and x.grad.shape == x.shape
    assert state.couplings.shape[:2] == (shape[0], H)


@pytest.mark.parametrize("block", ["spin", "transformer", "mean_field", "free_energy"])
@pytest.mark.parametrize("shape", [(0, 5), (2, 0)])
def test_spin_transformer_empty_tokens(block, shape):
    config = SpinTransformerConfig(vocab_size=10, max_len=8, d_model=D, n_heads=H, block=block)
    logits = SpinTransformer(config)(torch.zeros(shape, dtype=torch.long))
    assert logits.shape == (*shape, 10)


def test_classifier_of_an_empty_batch_and_of_an_empty_sequence():
    config = SpinTransformerConfig(
        vocab_size=10, max_len=8, d_model=D, n_heads=H, head="classify", num_classes=3
    )
    model = SpinTransformer(config)
    assert model(torch.zeros(0, 5, dtype=torch.long)).shape == (0, 3)
    with pytest.raises(ValueError, match="tokens must hold at least one position"):
        model(torch.zeros(2, 0, dtype=torch.long))  # a mean over no tokens would be NaN


@pytest.mark.parametrize("name", sorted(MODULES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_input_of_another_dtype_is_a_clear_error(name, dtype):
    module = MODULES[name](False)  # float32 parameters
    x = torch.randn(2, 4, D).to(dtype)
    with pytest.raises(
        ValueError, match=f"x must have the module's dtype torch.float32, got {dtype}"
    ):
        module(x)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_integer_input_is_a_clear_error(name):
    with pytest.raises(ValueError, match="x must be a floating tensor"):
        MODULES[name](False)(torch.ones(2, 4, D, dtype=torch.long))


@pytest.mark.parametrize("name", sorted(MODULES))
@pytest.mark.parametrize("size", [1e30, 3e38])
def test_overflowing_tokens_name_x(name, size):
    # finite float32 tokens whose fields or scores overflow: an error naming x, or a finite output
    torch.manual_seed(0)
    module = MODULES[name](False)
    signs = torch.randn(2, 4, D, generator=torch.Generator().manual_seed(1)).sign()
    x = size * signs
    try:
        out = module(x)
    except ValueError as err:
        assert str(err).startswith("x is too large for torch.float32"), err
    else:
        assert bool(torch.isfinite(out).all())
