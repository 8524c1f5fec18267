r"""A stack of spin-model blocks with embeddings and a head, configured by a frozen dataclass.

Training a deep stack shapes a collective of spin systems: the magnetizations of one block are
(after the residual and normalisation) the fields that probe the next (Bal, "Transformers are
secretly collectives of spin systems", 2021). The same model runs with the reference
:class:`~spinformer.nn.blocks.TransformerBlock` (``block="transformer"``), so every comparison
changes one thing only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from spinformer._validation import check_positive_int
from spinformer.nn._spin import BlockState
from spinformer.nn.blocks import (
    COUPLINGS,
    NORMS,
    STARTS,
    AttentionBlock,
    BoltzmannSelfAttention,
    Coupling,
    Norm,
    SpinTransformerBlock,
    Start,
    TransformerBlock,
)
from spinformer.nn.meanfield import FreeEnergyAttention, MeanFieldAttention

__all__ = ["BLOCK_FACTORIES", "BlockKind", "SpinTransformer", "SpinTransformerConfig"]


def _transformer(c: SpinTransformerConfig, layer: int) -> nn.Module:
    return TransformerBlock(c.d_model, c.n_heads, causal=c.causal, ffn_mult=c.ffn_mult)


def _boltzmann(c: SpinTransformerConfig, layer: int) -> nn.Module:
    attention = BoltzmannSelfAttention(c.d_model, c.n_heads, c.causal, c.learn_beta)
    return AttentionBlock(attention, c.d_model, c.ffn_mult)


#: Config fields every fixed-point block takes under the same name: the solve and the
#: temperature.
_RELAX = ("steps", "solver", "tol", "max_iter", "beta", "learn_beta", "causal")


def _same_named(c: SpinTransformerConfig, *names: str) -> dict[str, Any]:
    """The config's values of ``names``, as keyword arguments of the same names."""
    return {name: getattr(c, name) for name in names}


def _spin(c: SpinTransformerConfig, layer: int) -> nn.Module:
    # a stream carried in magnetization coordinates: the embeddings enter the first block as a
    # field, every later block receives the magnetizations of the one before
    residual = "add" if c.residual == "add" else ("field" if layer == 0 else "magnetization")
    return SpinTransformerBlock(
        c.d_model,
        c.n_heads,
        residual=residual,
        rope=c.position == "rotary",
        **_same_named(c, *_RELAX, "order", "ffn_field", "ffn_mult", "coupling", "norm", "start"),
    )


def _mean_field(c: SpinTransformerConfig, layer: int) -> nn.Module:
    attention = MeanFieldAttention(c.d_model, c.n_heads, **_same_named(c, *_RELAX, "onsager"))
    return AttentionBlock(attention, c.d_model, c.ffn_mult if c.ffn_field else None)


def _free_energy(c: SpinTransformerConfig, layer: int) -> nn.Module:
    attention = FreeEnergyAttention(
        c.d_model, c.n_heads, beta=c.beta, learn_beta=c.learn_beta, causal=c.causal
    )
    return AttentionBlock(attention, c.d_model, c.ffn_mult if c.ffn_field else None)


#: The block kinds of :class:`SpinTransformer`: name -> factory (config, layer index) -> block.
#: The config's allowed ``block`` values (and the training config's ``model``) come from here.
BLOCK_FACTORIES: dict[str, Callable[[SpinTransformerConfig, int], nn.Module]] = {
    "transformer": _transformer,
    "boltzmann": _boltzmann,
    "spin": _spin,
    "mean_field": _mean_field,
    "free_energy": _free_energy,
}
BlockKind = Literal[tuple(BLOCK_FACTORIES)]  # type: ignore[valid-type]


@dataclass(frozen=True)
class SpinTransformerConfig:
    """Configuration of :class:`SpinTransformer` (validated on construction).

    ``block`` picks the layer from :data:`BLOCK_FACTORIES`: ``"spin"``
    (:class:`SpinTransformerBlock`), ``"transformer"`` (reference), ``"boltzmann"``
    (:class:`~spinformer.nn.BoltzmannAttention` in the reference's place), ``"mean_field"`` /
    ``"free_energy"`` (the attention modules in a pre-norm residual block). ``steps=None``
    means fixed points. ``coupling``, ``norm``, ``start`` and ``residual`` are the spin block's
    design choices (:class:`SpinTransformerBlock`); ``residual="magnetization"`` carries the
    stream in magnetization coordinates: the first block takes the token embeddings, which start
    on the spin radius R per head, as a field. ``position="rotary"`` drops the absolute position
    embedding and rotates the spin blocks' queries and keys instead (relative positions). ``head`` is ``"lm"`` (next-token logits
    at every position) or ``"classify"`` (mean over real tokens, ``num_classes`` logits).
    """

    vocab_size: int
    max_len: int
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    block: BlockKind = "spin"
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
    coupling: Coupling = "cosine"
    norm: Norm = "rms"
    start: Start = "learned"
    residual: Literal["add", "magnetization"] = "magnetization"
    position: Literal["absolute", "rotary"] = "absolute"
    solver: str = "anderson"
    tol: float = 1e-4
    max_iter: int = 50

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_len", "d_model", "n_heads", "n_layers", "ffn_mult"):
            check_positive_int(getattr(self, name), name)
        if self.block not in BLOCK_FACTORIES:
            raise ValueError(f"block must be one of {tuple(BLOCK_FACTORIES)}, got {self.block!r}")
        for name, choices in (
            ("coupling", COUPLINGS),
            ("norm", NORMS),
            ("start", STARTS),
            ("residual", ("add", "magnetization")),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        if self.position not in ("absolute", "rotary"):
            raise ValueError(f"position must be 'absolute' or 'rotary', got {self.position!r}")
        if self.position == "rotary" and self.block != "spin":
            raise ValueError(
                f"position='rotary' is implemented by block 'spin' only, got block {self.block!r}"
            )
        if self.head not in ("lm", "classify"):
            raise ValueError(f"head must be 'lm' or 'classify', got {self.head!r}")
        if self.head == "classify":
            check_positive_int(self.num_classes, "num_classes")

    def replace(self, **changes: object) -> SpinTransformerConfig:
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


class SpinTransformer(nn.Module):
    """Token + position embeddings, ``n_layers`` blocks, final LayerNorm and an LM or class head."""

    def __init__(self, config: SpinTransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.position = (
            nn.Embedding(config.max_len, config.d_model) if config.position == "absolute" else None
        )
        make = BLOCK_FACTORIES[config.block]
        self.blocks = nn.ModuleList(make(config, layer) for layer in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)
        out = config.vocab_size if config.head == "lm" else config.num_classes
        self.head = nn.Linear(config.d_model, out)  # type: ignore[arg-type]
        if config.block == "spin" and config.residual == "magnetization":
            # the embeddings are the first spin system's fields: start them on the radius R
            radius = self.blocks[0].radius
            with torch.no_grad():
                heads = self.embed.weight.unflatten(-1, (config.n_heads, -1))
                heads.copy_(radius * torch.nn.functional.normalize(heads, dim=-1))

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
        x = self.embed(tokens)
        if self.position is not None:
            x = x + self.position(torch.arange(n, device=tokens.device))
        states = []
        for block in self.blocks:
            if return_state:
                x, state = block(x, padding_mask, return_state=True)
                states.append(state)
            else:
                x = block(x, padding_mask)
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
