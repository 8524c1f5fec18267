r"""The couplings of an attention layer.

Bal, "Transformers are secretly collectives of spin systems" (2021), reads an attention head as a
spin system. With the ``nn.Linear`` convention :math:`q_i = W_Q x_i + b_Q`, :math:`k_j = W_K x_j + b_K`
(per head, :math:`W_Q, W_K \in \mathbb{R}^{d\times D}`), the attention score is

.. math::

    \omega_{ij} = k_j\cdot q_i
    = x_j^\top W_{QK}\,x_i + h\cdot x_j + (\text{terms independent of } j),
    \qquad W_{QK} = W_K^\top W_Q,\quad h = W_K^\top b_Q,

so :math:`W_{QK}` (D×D, rank ≤ d) is the coupling matrix between the query spin and the key spins
(:math:`J = \beta W_{QK}`), :math:`b_Q` is an external field on the key spins and :math:`b_K`
only shifts every score of row :math:`i` by the same constant, which cancels in the weights.
Only the symmetric part :math:`\tfrac12(W_{QK} + W_{QK}^\top)` defines an energy function; the
antisymmetric part is a non-equilibrium drive, and :attr:`Couplings.asymmetry` measures it.

Design. Couplings are low rank per head, so :class:`Couplings` keeps the factors
:math:`(W_Q, W_K)` and materializes the D×D matrix only when :attr:`Couplings.w_qk` is asked for.
Spectra and norms are computed from the factors: with reduced QR factorizations
:math:`W_K^\top = Q_K R_K`, :math:`W_Q^\top = Q_Q R_Q`, the singular values of :math:`W_{QK}` are
those of the d×d matrix :math:`R_K R_Q^\top`; the symmetric part is
:math:`\tfrac12 C P C^\top` with :math:`C = [W_K^\top\ W_Q^\top]` and :math:`P` the block swap, so
its non-zero eigenvalues are those of the 2d×2d matrix :math:`\tfrac12 R P R^\top` (``C = QR``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor

from spinformer._shapes import AxisLength
from spinformer._validation import as_tensor, check_beta, check_finite, describe
from spinformer.attention.ensemble import AttentionEnsemble, ensemble

__all__ = ["Couplings", "couplings"]


@dataclass(frozen=True)
class Couplings:
    """Per-head couplings of an attention layer, kept factored (see the module docstring).

    Attributes:
        w_q: query maps, shape (H, d_head, D).
        w_k: key maps, shape (H, d_head, D_k) (D_k = D for self-attention).
        beta: inverse temperature per head, shape (H,).
        b_q: query biases (H, d_head) or ``None``.
        b_k: key biases (H, d_head) or ``None``.
    """

    w_q: Tensor
    w_k: Tensor
    beta: Tensor
    b_q: Tensor | None = None
    b_k: Tensor | None = None

    num_heads = AxisLength("w_q", 0, "H, the number of heads.")
    head_dim = AxisLength("w_q", 1, "d_head, the dimension of a head's queries and keys.")
    embed_dim = AxisLength("w_q", 2, "D, the dimension of the query spins.")
    key_dim = AxisLength("w_k", 2, "D_k, the dimension of the key spins.")

    @property
    def w_qk(self) -> Tensor:
        """W_QK = W_Kᵀ W_Q per head, shape (H, D_k, D): x_jᵀ w_qk[h] x_i = k_j·q_i without biases."""
        return self.w_k.transpose(-1, -2) @ self.w_q

    @property
    def field(self) -> Tensor:
        """h = W_Kᵀ b_Q per head, shape (H, D_k): the external field on the key spins."""
        if self.b_q is None:
            return self.w_k.new_zeros(self.num_heads, self.key_dim)
        return (self.w_k.transpose(-1, -2) @ self.b_q.unsqueeze(-1)).squeeze(-1)

    def _require_square(self, what: str) -> None:
        if self.key_dim != self.embed_dim:
            raise ValueError(
                f"{what} needs square couplings (kdim == embed_dim), got D_k = {self.key_dim}"
                f" and D = {self.embed_dim}"
            )

    @property
    def symmetric(self) -> Tensor:
        """½(W_QK + W_QKᵀ), shape (H, D, D): the part that defines an energy."""
        self._require_square("symmetric")
        w = self.w_qk
        return 0.5 * (w + w.transpose(-1, -2))

    @property
    def antisymmetric(self) -> Tensor:
        """½(W_QK − W_QKᵀ), shape (H, D, D): the non-equilibrium part."""
        self._require_square("antisymmetric")
        w = self.w_qk
        return 0.5 * (w - w.transpose(-1, -2))

    @cached_property
    def frobenius_norm(self) -> Tensor:
        """‖W_QK‖_F per head, from the d×d Gram matrices: tr((W_K W_Kᵀ)(W_Q W_Qᵀ))^½."""
        gram_k = self.w_k @ self.w_k.transpose(-1, -2)
        gram_q = self.w_q @ self.w_q.transpose(-1, -2)
        return (gram_k * gram_q).sum(dim=(-1, -2)).clamp_min(0).sqrt()

    @cached_property
    def asymmetry(self) -> Tensor:
        """‖A‖_F / ‖W_QK‖_F per head (0 for symmetric couplings, 1 for antisymmetric ones).

        Uses ‖A‖² = ½(‖W‖² − tr W²) with tr W² = tr(G G), G = W_Q W_Kᵀ (d×d).
        """
        self._require_square("asymmetry")
        g = self.w_q @ self.w_k.transpose(-1, -2)
        trace_square = (g * g.transpose(-1, -2)).sum(dim=(-1, -2))
        norm = self.frobenius_norm
        anti = (0.5 * (norm**2 - trace_square)).clamp_min(0).sqrt()
        return torch.where(norm > 0, anti / torch.where(norm > 0, norm, 1.0), 0.0)

    @cached_property
    def singular_values(self) -> Tensor:
        """Singular values of W_QK per head, descending, shape (H, min(D_k, D)) (zeros past rank)."""
        _, r_k = torch.linalg.qr(self.w_k.transpose(-1, -2))
        _, r_q = torch.linalg.qr(self.w_q.transpose(-1, -2))
        values = torch.linalg.svdvals(r_k @ r_q.transpose(-1, -2))
        size = min(self.key_dim, self.embed_dim)
        return _pad(values, size).sort(dim=-1, descending=True).values

    @cached_property
    def symmetric_eigenvalues(self) -> Tensor:
        """Eigenvalues of ½(W_QK + W_QKᵀ) per head, ascending, shape (H, D) (zeros past rank)."""
        self._require_square("symmetric_eigenvalues")
        d = self.head_dim
        c = torch.cat([self.w_k.transpose(-1, -2), self.w_q.transpose(-1, -2)], dim=-1)
        _, r = torch.linalg.qr(c)  # (H, min(D, 2d), 2d)
        swap = torch.zeros(2 * d, 2 * d, dtype=c.dtype, device=c.device)
        swap[:d, d:] = torch.eye(d, dtype=c.dtype, device=c.device)
        swap[d:, :d] = torch.eye(d, dtype=c.dtype, device=c.device)
        core = 0.5 * (r @ swap @ r.transpose(-1, -2))
        values = torch.linalg.eigvalsh(0.5 * (core + core.transpose(-1, -2)))
        return _pad(values, self.embed_dim).sort(dim=-1).values

    def project(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Queries and keys per head: x (*batch, N, D), context (*batch, M, D_k) → (…, H, N|M, d)."""
        context = x if context is None else context
        _check_tokens(x, self.embed_dim, "x")
        _check_tokens(context, self.key_dim, "context")
        q = torch.einsum("hcd,...nd->...hnc", self.w_q.to(x.dtype), x)
        k = torch.einsum("hcd,...md->...hmc", self.w_k.to(context.dtype), context)
        if self.b_q is not None:
            q = q + self.b_q.to(q.dtype).unsqueeze(-2)
        if self.b_k is not None:
            k = k + self.b_k.to(k.dtype).unsqueeze(-2)
        return q, k

    def ensemble(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> AttentionEnsemble:
        """The per-head Boltzmann ensembles of tokens ``x`` attending to ``context`` (default x).

        Batch shape of the result is (*batch, H); a mask of shape (…, N, M) broadcasts over heads
        only if it has a head axis or fewer dims (pass ``mask.unsqueeze(-3)`` for (B, N, M)).
        """
        q, k = self.project(x, context)
        return ensemble(q, k, self.beta.to(q.dtype), mask=mask, is_causal=is_causal)


def _pad(values: Tensor, size: int) -> Tensor:
    missing = size - values.shape[-1]
    if missing <= 0:
        return values[..., :size]
    return torch.cat([values, values.new_zeros(*values.shape[:-1], missing)], dim=-1)


def _check_tokens(x: Tensor, dim: int, name: str) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2 or x.shape[-1] != dim:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a floating tensor of shape (..., N, {dim}), got {shape}")
    check_finite(x, name)


def _module_weights(module: Any) -> dict[str, Any]:
    """(w_q, w_k, b_q, b_k, num_heads, beta) from an ``nn.MultiheadAttention``-like module."""
    embed_dim = module.embed_dim
    if getattr(module, "in_proj_weight", None) is not None:
        w_q, w_k, _ = module.in_proj_weight.chunk(3, dim=0)
    else:
        w_q, w_k = module.q_proj_weight, module.k_proj_weight
    bias = getattr(module, "in_proj_bias", None)
    b_q, b_k = (None, None) if bias is None else (bias[:embed_dim], bias[embed_dim : 2 * embed_dim])
    beta = getattr(module, "beta", None)
    return {
        "w_q": w_q.detach(),
        "w_k": w_k.detach(),
        "b_q": None if b_q is None else b_q.detach(),
        "b_k": None if b_k is None else b_k.detach(),
        "num_heads": module.num_heads,
        "beta": None if beta is None else torch.as_tensor(beta).detach(),
    }


def couplings(
    w_q: Tensor | torch.nn.Module,
    w_k: Tensor | None = None,
    num_heads: int | None = None,
    b_q: Tensor | None = None,
    b_k: Tensor | None = None,
    beta: Tensor | float | None = None,
) -> Couplings:
    """Per-head couplings W_QK = W_Kᵀ W_Q (kept factored), fields and β of an attention layer.

    Args:
        w_q: query weight in the ``nn.Linear`` layout, shape (H·d, D), heads stacked along the
            rows as in ``nn.MultiheadAttention``; or a ``torch.nn.MultiheadAttention`` or
            :class:`spinformer.nn.BoltzmannAttention`, whose weights (and β) are read.
        w_k: key weight, shape (H·d, D_k).
        num_heads: H; must divide the number of rows.
        b_q, b_k: biases of shape (H·d,) or ``None``.
        beta: float or per-head tensor (H,); default 1/√d.

    >>> c = couplings(torch.eye(4), torch.eye(4), num_heads=2)
    >>> tuple(c.w_qk.shape), [round(float(b), 4) for b in c.beta]
    ((2, 4, 4), [0.7071, 0.7071])
    """
    if isinstance(w_q, torch.nn.Module):
        if w_k is not None or num_heads is not None or b_q is not None or b_k is not None:
            raise ValueError("pass either a module or weight tensors, not both")
        if not hasattr(w_q, "num_heads") or not hasattr(w_q, "embed_dim"):
            raise ValueError(
                f"w_q must be a tensor or a multi-head attention module, got {type(w_q).__name__}"
            )
        weights = _module_weights(w_q)
        return couplings(**{**weights, "beta": weights["beta"] if beta is None else beta})
    if w_k is None or num_heads is None:
        raise ValueError("w_k and num_heads are required when w_q is a tensor")
    for name, w in (("w_q", w_q), ("w_k", w_k)):
        if not isinstance(w, Tensor) or w.ndim != 2 or not w.is_floating_point():
            raise ValueError(f"{name} must be a floating (H*d_head, D) matrix, got {describe(w)}")
        check_finite(w, name)
    if w_q.shape[0] != w_k.shape[0]:
        raise ValueError(
            f"w_q and w_k must have the same number of rows (H*d_head), got {w_q.shape[0]} and"
            f" {w_k.shape[0]}"
        )
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive integer, got {num_heads!r}")
    if w_q.shape[0] % num_heads:
        raise ValueError(
            f"num_heads must divide the number of rows of w_q ({w_q.shape[0]}), got {num_heads}"
        )
    head_dim = w_q.shape[0] // num_heads
    dtype = torch.promote_types(w_q.dtype, w_k.dtype)
    biases = []
    for name, b in (("b_q", b_q), ("b_k", b_k)):
        if b is None:
            biases.append(None)
            continue
        if not isinstance(b, Tensor) or b.shape != (w_q.shape[0],):
            shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
            raise ValueError(f"{name} must have shape ({w_q.shape[0]},), got {shape}")
        check_finite(b, name)
        biases.append(b.to(dtype).reshape(num_heads, head_dim))
    if beta is None:
        beta_t = torch.full((num_heads,), 1.0 / math.sqrt(head_dim), dtype=dtype, device=w_q.device)
    else:
        beta_t = as_tensor(beta, "beta", dtype=dtype, device=w_q.device)
        check_beta(beta_t)
        if beta_t.ndim > 1 or (beta_t.ndim == 1 and beta_t.shape[0] not in (1, num_heads)):
            raise ValueError(
                f"beta must be a float or have shape ({num_heads},), got {tuple(beta_t.shape)}"
            )
        beta_t = beta_t.expand(num_heads).clone()
    return Couplings(
        w_q=w_q.to(dtype).reshape(num_heads, head_dim, w_q.shape[1]),
        w_k=w_k.to(dtype).reshape(num_heads, head_dim, w_k.shape[1]),
        beta=beta_t,
        b_q=biases[0],
        b_k=biases[1],
    )
