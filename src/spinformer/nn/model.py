r"""A stack of spin-model blocks with embeddings and a head, configured by a frozen dataclass.

Training a deep stack shapes a collective of spin systems: the magnetizations of one block are
(after the residual and normalisation) the fields that probe the next (seed 003, §10). The same
model runs with the reference :class:`~spinformer.nn.blocks.TransformerBlock` (``block=
"transformer"``), so every comparison changes one thing only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from spinformer._validation import check_positive_int
from spinformer.nn._spin import BlockState
from spinformer.nn.blocks import AttentionBlock, SpinTransformerBlock, TransformerBlock
from spinformer.nn.meanfield import FreeEnergyAttention, MeanFieldAttention

__all__ = ["SpinTransformer", "SpinTransformerConfig"]

BLOCKS = ("spin", "transformer", "mean_field", "free_energy")


@dataclass(frozen=True)
class SpinTransformerConfig:
    """Configuration of :class:`SpinTransformer` (validated on construction).

    ``block`` picks the layer: ``"spin"`` (:class:`SpinTransformerBlock`), ``"transformer"``
    (reference), ``"mean_field"`` / ``"free_energy"`` (the attention modules in a pre-norm
    residual block). ``steps=None`` means fixed points. ``head`` is ``"lm"`` (next-token logits
    at every position) or ``"classify"`` (mean over real tokens, ``num_classes`` logits).
    """

    vocab_size: int
    max_len: int
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    block: Literal["spin", "transformer", "mean_field", "free_energy"] = "spin"
    causal: bool = True
    head: Literal["lm", "classify"] = "lm"
    num_classes: int | None = None
    beta: float = 1.0
    learn_beta: bool = True
    order: int = 1
    steps: int | None = None
    ffn_field: bool = True
    ffn_mult: int = 4
    onsager: Literal["none", "tap", "learned"] = "tap"
    solver: str = "anderson"
    tol: float = 1e-4
    max_iter: int = 50

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "d_model", "n_heads", "n_layers", "ffn_mult"):
            check_positive_int(getattr(self, name), name)
        if self.block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {self.block!r}")
        if self.head not in ("lm", "classify"):
            raise ValueError(f"head must be 'lm' or 'classify', got {self.head!r}")
        if self.head == "classify":
            check_positive_int(self.num_classes, "num_classes")

    def replace(self, **changes: object) -> SpinTransformerConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


def _make_block(config: SpinTransformerConfig) -> nn.Module:
    c = config
    if c.block == "transformer":
        return TransformerBlock(c.d_model, c.n_heads, causal=c.causal, ffn_mult=c.ffn_mult)
    if c.block == "spin":
        return SpinTransformerBlock(
            c.d_model,
            c.n_heads,
            order=c.order,
            steps=c.steps,
            causal=c.causal,
            beta=c.beta,
            learn_beta=c.learn_beta,
            ffn_field=c.ffn_field,
            ffn_mult=c.ffn_mult,
            solver=c.solver,
            tol=c.tol,
            max_iter=c.max_iter,
        )
    if c.block == "mean_field":
        attention: nn.Module = MeanFieldAttention(
            c.d_model,
            c.n_heads,
            onsager=c.onsager,
            beta=c.beta,
            learn_beta=c.learn_beta,
            causal=c.causal,
            steps=c.steps,
            solver=c.solver,
            tol=c.tol,
            max_iter=c.max_iter,
        )
    else:
        attention = FreeEnergyAttention(
            c.d_model, c.n_heads, beta=c.beta, learn_beta=c.learn_beta, causal=c.causal
        )
    return AttentionBlock(attention, c.d_model, c.ffn_mult if c.ffn_field else None)


class SpinTransformer(nn.Module):
    """Token + position embeddings, ``n_layers`` blocks, final LayerNorm and an LM or class head."""

    def __init__(self, config: SpinTransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.position = nn.Embedding(config.max_len, config.d_model)
        self.blocks = nn.ModuleList(_make_block(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)
        out = config.vocab_size if config.head == "lm" else config.num_classes
        self.head = nn.Linear(config.d_model, out)  # type: ignore[arg-type]

    def forward(
        self,
        tokens: Tensor,
        padding_mask: Tensor | None = None,
        return_state: bool = False,
    ) -> Tensor | tuple[Tensor, list[BlockState]]:
        """Logits (B, N, vocab) for ``head="lm"`` or (B, num_classes) for ``"classify"``."""
        if tokens.ndim != 2 or tokens.dtype not in (torch.long, torch.int32, torch.int64):
            raise ValueError(
                f"tokens must be an integer tensor (B, N), got {tokens.dtype} {tuple(tokens.shape)}"
            )
        n = tokens.shape[1]
        if n == 0 and self.config.head == "classify" and tokens.shape[0] > 0:
            raise ValueError(
                "tokens must hold at least one position to classify (head='classify' pools over"
                f" the sequence), got shape {tuple(tokens.shape)}"
            )
        if n > self.config.max_len:
            raise ValueError(f"sequence length must be <= max_len={self.config.max_len}, got {n}")
        if bool(((tokens < 0) | (tokens >= self.config.vocab_size)).any()):
            raise ValueError(
                f"tokens must lie in [0, {self.config.vocab_size}), got out-of-range ids"
            )
        x = self.embed(tokens) + self.position(torch.arange(n, device=tokens.device))
        states = []
        for block in self.blocks:
            x, state = block(x, padding_mask, return_state=True)
            states.append(state)
        x = self.norm(x)
        if self.config.head == "classify":
            if padding_mask is None:
                pooled = x.mean(1)
            else:
                weights = padding_mask.to(x.dtype)[..., None]
                pooled = (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)
            logits = self.head(pooled)
        else:
            logits = self.head(x)
        return (logits, states) if return_state else logits
