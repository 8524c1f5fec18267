r"""Transformer blocks as dynamical mean field of asymmetric vector-spin systems, and the reference.

:class:`SpinTransformerBlock` (Bal, "Spin-model transformers", 2023). Softmax attention
couplings J_ij = softmax_j(q_i·k_j/√d) are asymmetric, so the block does not minimise a free
energy; it runs the *dynamics* of a kinetic vector-spin model probed by the normalised tokens,
in the dynamical (Plefka[t−1, t]) mean field of :mod:`spinformer.physics.dynamical`:

.. math::

    m(0) = 0,\qquad m_i(t) = \varphi\Big(h_i + \sum_j J_{ij}\, m_j(t-1)\Big)
    \;[+\ \text{second-order correction}],\qquad
    \text{out}_i = x_i + W_O\, m_i(K),

per head, with h = W_F LN(x) (+ FFN(LN(x)) with ``ffn_field``) and φ the large-D response with
R² = d/2 − 1. ``steps=K`` runs K steps (K = 1 is φ(h): the couplings are invisible, so attention
needs K ≥ 2); ``steps=None`` returns the stationary state m* = step(m*) from
:mod:`spinformer.solvers` with the implicit backward. φ has slope ≤ β/2 and rows of J sum to
one, so the step is a contraction for β < 2 and the fixed point exists and is unique there.
Causal masking makes J lower-triangular, so m_i depends on tokens ≤ i only -- for every K and
at the fixed point.

:class:`TransformerBlock` is the standard pre-norm block (torch's scaled-dot-product attention +
GELU MLP) with the same interface; every benchmark and experiment measures against it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spinformer._validation import check_positive_int
from spinformer.nn._spin import (
    BlockState,
    PositiveBeta,
    allowed_keys,
    check_heads,
    check_overflow,
    check_steps,
    check_tokens,
    feed_forward,
    field_scale,
    merge_heads,
    relax,
    softmax_couplings,
    split_heads,
)
from spinformer.physics.dynamical import vector_step
from spinformer.physics.meanfield import transformer_radius

__all__ = ["AttentionBlock", "SpinTransformerBlock", "TransformerBlock"]


class SpinTransformerBlock(nn.Module):
    """Dynamical mean field of per-head asymmetric vector-spin systems (see the module docstring).

    Args:
        d_model, n_heads: width and heads; the head dimension d must be > 2.
        order: 1 (naive dynamical mean field) or 2 (Plefka second order, the dynamical TAP).
        steps: number of relaxation steps K, or ``None`` for the stationary state.
        causal: couple token i only to j ≤ i.
        beta: initial inverse temperature per head; ``learn_beta`` makes it trainable.
        ffn_field: add a position-wise MLP of LN(x) to the external field.
        ffn_mult: MLP hidden width multiplier.
        solver, tol, max_iter, implicit: passed to :func:`spinformer.solvers.fixed_point`.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        order: int = 1,
        steps: int | None = None,
        causal: bool = False,
        beta: float = 1.0,
        learn_beta: bool = True,
        ffn_field: bool = True,
        ffn_mult: int = 4,
        solver: str = "anderson",
        tol: float = 1e-4,
        max_iter: int = 50,
        implicit: bool = True,
    ) -> None:
        super().__init__()
        self.head_dim = check_heads(d_model, n_heads, min_head_dim=3)
        if order not in (1, 2):
            raise ValueError(f"order must be 1 (naive) or 2 (second order), got {order!r}")
        check_steps(steps)
        self.d_model, self.n_heads, self.order = d_model, n_heads, order
        self.steps, self.causal = steps, causal
        self.solver, self.tol, self.max_iter, self.implicit = solver, tol, max_iter, implicit
        self.radius = transformer_radius(self.head_dim)
        self.beta = PositiveBeta(beta, n_heads, learn_beta)
        self.norm = nn.LayerNorm(d_model)
        self.field = nn.Linear(d_model, d_model, bias=False)
        self.query = nn.Linear(d_model, d_model, bias=False)
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model)
        self.ffn = feed_forward(d_model, ffn_mult) if ffn_field else None

    def couplings(self, x_norm: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Asymmetric softmax couplings J (B, H, N, N) of normalised tokens, masked entries zero."""
        allowed = allowed_keys(x_norm.shape[1], self.causal, padding_mask, x_norm.device)
        q = split_heads(self.query(x_norm), self.n_heads)
        k = split_heads(self.key(x_norm), self.n_heads)
        return softmax_couplings(q, k, allowed)

    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, BlockState]:
        """x + W_O m, m the dynamical mean-field magnetizations after K steps or at stationarity."""
        check_tokens(x, self.d_model, padding_mask, self.field.weight.dtype)
        x_norm = self.norm(x)
        field_in = self.field(x_norm)
        if self.ffn is not None:
            field_in = field_in + self.ffn(x_norm)
        field = split_heads(field_in, self.n_heads)
        couplings = self.couplings(x_norm, padding_mask)
        beta = self.beta()
        b = beta[:, None, None]
        check_overflow(
            x,
            {
                "LayerNorm(x)": x_norm,
                "the fields β|h|/R": field_scale(field, beta, self.radius),
                "the couplings softmax(q·k)": couplings,
            },
        )

        def step(m: Tensor) -> Tensor:
            return vector_step(m, couplings, field, b, self.radius, self.order)

        zeros = torch.zeros_like(field)  # K steps from m = 0; the solver from step(0)
        start = zeros if self.steps is not None else step(zeros)
        m, converged, iterations, residual = relax(
            step, start, self.steps, self.solver, self.tol, self.max_iter, self.implicit
        )
        out = x + self.out(merge_heads(m))
        if not return_state:
            return out
        return out, BlockState(m, couplings, converged, iterations, residual, None, beta)


class TransformerBlock(nn.Module):
    """Standard pre-norm block: x + MHA(LN x), then + MLP(LN x) (the reference).

    Same forward interface as :class:`SpinTransformerBlock` (``x, padding_mask, return_state``);
    the state holds the attention matrices as ``couplings`` and no magnetization.
    """

    def __init__(self, d_model: int, n_heads: int, causal: bool = False, ffn_mult: int = 4) -> None:
        super().__init__()
        self.head_dim = check_heads(d_model, n_heads)
        self.d_model, self.n_heads, self.causal = d_model, n_heads, causal
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = feed_forward(d_model, ffn_mult)

    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, BlockState]:
        check_tokens(x, self.d_model, padding_mask, self.qkv.weight.dtype)
        allowed = allowed_keys(x.shape[1], self.causal, padding_mask, x.device)
        q, k, v = (split_heads(t, self.n_heads) for t in self.qkv(self.norm1(x)).chunk(3, dim=-1))
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        out = x + self.proj(merge_heads(attended))
        out = out + self.mlp(self.norm2(out))
        check_overflow(x, {"the block's output": out})
        if not return_state:
            return out
        return out, BlockState(None, softmax_couplings(q, k, allowed))


class AttentionBlock(nn.Module):
    """Pre-norm residual wrapper x + attention(LN x) [+ MLP(LN x)] for a spin attention module."""

    def __init__(self, attention: nn.Module, d_model: int, ffn_mult: int | None = 4) -> None:
        super().__init__()
        check_positive_int(d_model, "d_model")
        self.d_model = d_model
        self.attention = attention
        self.norm = nn.LayerNorm(d_model)
        self.mlp = None
        if ffn_mult:
            self.norm2 = nn.LayerNorm(d_model)
            self.mlp = feed_forward(d_model, ffn_mult)

    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, BlockState]:
        check_tokens(x, self.d_model, padding_mask, self.norm.weight.dtype)
        normed = self.norm(x)
        check_overflow(x, {"LayerNorm(x)": normed})
        out, state = self.attention(normed, padding_mask, return_state=True)
        out = x + out
        if self.mlp is not None:
            out = out + self.mlp(self.norm2(out))
        check_overflow(x, {"the block's output": out})
        return (out, state) if return_state else out


BlockKind = Literal["spin", "transformer", "mean_field", "free_energy"]
