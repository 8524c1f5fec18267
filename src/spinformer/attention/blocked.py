r"""Attention output and row thermodynamics in cache-sized blocks, with a recomputing backward.

The same ensembles as :mod:`spinformer.attention.ensemble` (its fast path): for every
query i the logits :math:`c_{ij} = \beta\, q_i\cdot k_j` plus an additive mask :math:`a_{ij}`
define :math:`\alpha_{ij} = e^{c_{ij} + a_{ij}}/Z_i`, and one pass over the keys gives

.. math::

    z_i = \sum_j \alpha_{ij} v_j,\quad \ln Z_i,\quad
    \langle c\rangle_i = -\beta U_i,\quad S_i = \ln Z_i - \langle c\rangle_i,\quad
    \operatorname{Var}_{\alpha_i}(c) = C_i .

Why blocks. Materializing the (batch, heads, L, S) score tensor costs a trip to main memory for
every elementwise pass (scale, max, exp, sums, moments) and a fresh allocation per call; a fused
SDPA kernel never leaves the cache. Here the score rows are produced a block at a time
(whole batch entries, groups of heads, or groups of query rows, so that one block holds about
``block_elements`` scores) into buffers reused from block to block; every pass runs on data
in cache. Each block holds complete rows, so nothing is rescaled online. Per block: the weights
:math:`\alpha` come from one fused softmax pass (shifted by the exact row maximum), and since the
maximum's weight is :math:`e^0/Z'`, :math:`\ln Z' = -\ln\max_j\alpha_{ij}`; the output is
:math:`\alpha v`; the moments are centred two-pass sums of :math:`\ell = c - \max` and
:math:`t = \ell - \langle\ell\rangle`, as in :func:`~spinformer.attention.boltzmann_rows`
(finite and accurate from β = 1e-6 to 1e6), turned into ln Z, U, S and C by the same
:func:`~spinformer.attention.ensemble.row_terms`. Heads that lie strided in a fused projection
are multiplied where they lie (no contiguous copies of q, k, v).

Backward (the flash-attention idea, Dao et al. 2022, arXiv:2205.14135): nothing of size L×S is
stored; the block scores are recomputed from q, k and the saved row statistics
(max, ln Z', ⟨c⟩). With :math:`t_{ij} = c_{ij} - \langle c\rangle_i`, upstream gradients
:math:`\bar z_i, \overline{\ln Z}_i, \bar m_i, \bar V_i` of the output, ln Z, ⟨c⟩ and Var(c)
(the entropy's enters as :math:`\overline{\ln Z} \mathrel{+}= \bar S`,
:math:`\bar m \mathrel{-}= \bar S`), the gradient with respect to the logit is

.. math::

    \bar c_{ij} = \alpha_{ij}\big[\bar z_i\cdot v_j - \delta_i
        + t_{ij}(\bar m_i + 2\bar V_i) + \bar V_i t_{ij}^2\big],\qquad
    \delta_i = \bar z_i\cdot z_i + \bar V_i \operatorname{Var}_i - \overline{\ln Z}_i - \bar m_i,

(softmax backward plus the direct dependence of ⟨c⟩ and Var(c) on c), from which
:math:`\bar q = \beta\,\bar c\,k`, :math:`\bar k = \beta\,\bar c^{\mathsf T} q` and
:math:`\bar v = \alpha^{\mathsf T}\bar z`. The mask gets no gradient.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from spinformer.attention.ensemble import EnsembleThermodynamics, row_terms, row_thermodynamics

__all__ = ["DEFAULT_BLOCK_ELEMENTS", "blocked_boltzmann_attention"]

DEFAULT_BLOCK_ELEMENTS = 1 << 20
"""Scores per block (4 MiB in float32; the three block buffers stay in a 32 MiB L3 cache).

Smaller blocks (2^18, in L2) were ~15% faster with one thread, but with two threads on a loaded
machine each elementwise op pays a thread rendezvous, so fewer, larger blocks won there."""


def blocked_boltzmann_attention(
    queries: Tensor,
    keys: Tensor,
    values: Tensor,
    beta: Tensor,
    bias: Tensor | None = None,
    scale: float = 1.0,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> tuple[Tensor, EnsembleThermodynamics]:
    """Magnetizations Σ_j α_ij v_j and the thermodynamics of every row, block by block.

    An internal kernel (it trusts its inputs: validated masks, no fully masked rows, finite
    tensors), differentiable with respect to ``queries``, ``keys``, ``values`` and ``beta``.

    Args:
        queries: (*batch, L, d).
        keys: (*batch, S, d), the same batch shape.
        values: (*batch, S, d_v).
        beta: inverse temperature, broadcastable to (*batch, L) (e.g. (H, 1) for per-head β);
            used for F = −ln Z/β and U = −⟨c⟩/β. The logits are ``scale · q·k``, so β must
            already be in ``scale`` (a uniform β) or folded into the queries (``scale`` = 1).
        bias: additive mask (−inf = excluded) broadcastable to (*batch, L, S), or ``None``.
        scale: multiplies the dot products.
        block_elements: about how many scores one block holds.

    Returns the output (*batch, L, d_v) and the thermodynamics (fields of shape (*batch, L)).
    """
    batch, tgt = queries.shape[:-2], queries.shape[-2]
    if bias is not None and bias.requires_grad and torch.is_grad_enabled():
        raise ValueError("bias must not require grad (the mask gets no gradient here)")
    output, log_partition, mean_logit, entropy, variance = _BlockedAttention.apply(
        queries, keys, values, bias, float(scale), int(block_elements)
    )
    output = output.view(*batch, tgt, values.shape[-1])
    shape = (*batch, tgt)
    terms = (t.view(shape) for t in (log_partition, mean_logit, entropy, variance))
    return output, row_thermodynamics(*terms, beta)


class _Blocks:
    """The block plan: (batch entries, heads, query rows) per block, and the mask per block.

    The batch is viewed as (outer, inner) = (prod(batch[:-1]), batch[-1]); a block covers
    several whole outer entries, or one outer entry and a range of inner ones, or one
    (outer, inner) pair and a range of query rows.
    """

    def __init__(self, batch: torch.Size, tgt: int, src: int, bias: Tensor | None, budget: int):
        inner = batch[-1] if len(batch) else 1
        outer = 1
        for size in batch[:-1]:
            outer *= size
        self.outer, self.inner, self.tgt, self.src = outer, inner, tgt, src
        rows = max(1, budget // max(src, 1))
        if rows >= tgt:
            whole = max(tgt, 1)  # tgt = 0: no rows to iterate, but steps must be positive
            heads = rows // whole
            if heads >= inner:
                self.per = (max(1, heads // max(inner, 1)), max(inner, 1), whole)
            else:
                self.per = (1, heads, whole)
        else:
            self.per = (1, 1, rows)
        self.bias: Tensor | None = None
        if bias is not None:
            full = bias.expand(*batch, bias.shape[-2], src)
            self.bias = full.reshape(outer, inner, bias.shape[-2], src)

    @property
    def size(self) -> int:
        """Scores in the largest block."""
        b, h, r = self.per
        return b * h * r * self.src

    def __iter__(self):
        """Yield (index, mask block of shape (b, h, r|1, S) or None).

        ``index`` = (outer slice, inner slice, row slice) selects the block of a tensor of
        shape (outer, inner, rows, ·); :func:`_flat` turns that into a 3-D (n, r, ·) tensor.
        """
        per_b, per_h, per_r = self.per
        for b0 in range(0, self.outer, per_b):
            outer = slice(b0, min(b0 + per_b, self.outer))
            for h0 in range(0, self.inner, per_h):
                inner = slice(h0, min(h0 + per_h, self.inner))
                for r0 in range(0, self.tgt, per_r):
                    rows = slice(r0, min(r0 + per_r, self.tgt))
                    mask = None
                    if self.bias is not None:
                        mask = self.bias[outer, inner]
                        mask = mask[:, :, rows] if mask.shape[-2] > 1 else mask
                    yield (outer, inner, rows), mask


def _flat(tensor: Tensor, index: tuple[slice, slice, slice]) -> Tensor:
    """The block ``index`` of an (outer, inner, rows, ·) tensor as (n, r, ·).

    A view whenever the block is one outer entry (strided heads, as from a fused projection,
    stay in place) or a contiguous range; a copy only for several outer entries of a strided
    tensor. Output buffers are contiguous, so their blocks are always views.
    """
    outer, inner, rows = index
    if outer.stop - outer.start == 1:
        return tensor[outer.start, inner, rows]
    block = tensor[outer, inner, rows]
    return block.reshape(-1, block.shape[-2], block.shape[-1])


def _view(buffer: Tensor, n: int, r: int, s: int) -> Tensor:
    return buffer[: n * r * s].view(n, r, s)


class _BlockedAttention(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        queries: Tensor,
        keys: Tensor,
        values: Tensor,
        bias: Tensor | None,
        scale: float,
        budget: int,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        batch = queries.shape[:-2]
        tgt, src, dim_v = queries.shape[-2], keys.shape[-2], values.shape[-1]
        blocks = _Blocks(batch, tgt, src, bias, budget)
        shape = (blocks.outer, blocks.inner)
        # (outer, inner, ·, ·) views: the heads of a fused projection are used where they lie
        q = (queries * scale if scale != 1.0 else queries).reshape(*shape, tgt, queries.shape[-1])
        k = keys.reshape(*shape, src, keys.shape[-1])
        v = values.reshape(*shape, src, dim_v)
        dtype, device = q.dtype, q.device
        output = torch.empty(*shape, tgt, dim_v, dtype=dtype, device=device)
        stats = torch.empty(4, *shape, tgt, 1, dtype=dtype, device=device)
        row_max, peak, first, second = stats.unbind(0)
        buffers = torch.empty(3, blocks.size, dtype=dtype, device=device)
        logit_buf, weight_buf, work_buf = buffers.unbind(0)
        for index, mask in blocks:
            keys_index = (index[0], index[1], slice(None))
            q_b = _flat(q, index)
            n, r = q_b.shape[0], q_b.shape[1]
            logits = _view(logit_buf, n, r, src)  # c = βω
            weights = _view(weight_buf, n, r, src)
            work = _view(work_buf, n, r, src)
            mx = _flat(row_max, index)
            torch.bmm(q_b, _flat(k, keys_index).transpose(-1, -2), out=logits)
            scores = logits
            if mask is not None:
                block = (mask.shape[0], -1, r, src)
                scores = torch.add(logits.view(block), mask, out=work.view(block)).view(n, r, src)
            torch.amax(scores, dim=-1, keepdim=True, out=mx)
            torch.softmax(scores, dim=-1, out=weights)  # α, one fused pass per row
            torch.bmm(weights, _flat(v, keys_index), out=_flat(output, index))
            # the weight of the maximum is e^0/Z' = 1/Z'
            torch.amax(weights, dim=-1, keepdim=True, out=_flat(peak, index))
            logits.sub_(mx)  # ℓ = c − max, finite where the mask is −inf
            mean = _flat(first, index)
            torch.sum(torch.mul(weights, logits, out=work), dim=-1, keepdim=True, out=mean)
            logits.sub_(mean)  # t = c − ⟨c⟩
            torch.mul(weights, logits, out=work).mul_(logits)
            torch.sum(work, dim=-1, keepdim=True, out=_flat(second, index))  # Var(c)
        del buffers, logit_buf, weight_buf, work_buf
        log_z_shift = peak.log_().neg_().squeeze(-1)  # ln Z' = ln Z − max
        mean_centred = first.squeeze(-1)  # ⟨c⟩ − max
        variance = second.squeeze(-1)
        row_max = row_max.squeeze(-1)
        log_partition, mean_logit, entropy = row_terms(row_max, log_z_shift, mean_centred)
        ctx.save_for_backward(q, k, v, bias, output, row_max, log_z_shift, mean_centred, variance)
        ctx.scale, ctx.budget, ctx.batch = scale, budget, batch
        ctx.set_materialize_grads(False)
        return output, log_partition, mean_logit, entropy, variance

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any,
        grad_output: Tensor | None,
        grad_log_partition: Tensor | None,
        grad_mean_logit: Tensor | None,
        grad_entropy: Tensor | None,
        grad_variance: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        q, k, v, bias, output, row_max, log_z_shift, mean_centred, variance = ctx.saved_tensors
        outer, inner, tgt = q.shape[0], q.shape[1], q.shape[2]
        src = k.shape[2]
        dtype, device = q.dtype, q.device
        zeros = torch.zeros(outer, inner, tgt, dtype=dtype, device=device)
        d_log_z = zeros if grad_log_partition is None else grad_log_partition
        d_mean = zeros if grad_mean_logit is None else grad_mean_logit
        if grad_entropy is not None:
            d_log_z = d_log_z + grad_entropy
            d_mean = d_mean - grad_entropy
        d_var = None if grad_variance is None else grad_variance.unsqueeze(-1)
        delta = -(d_log_z + d_mean)
        linear = d_mean
        if grad_output is not None:
            grad_output = grad_output.contiguous()
            delta = delta + (grad_output * output).sum(-1)
        if d_var is not None:
            delta = delta + grad_variance * variance
            linear = linear + 2.0 * grad_variance
        delta, linear = delta.unsqueeze(-1), linear.unsqueeze(-1)
        row_max, log_z_shift = row_max.unsqueeze(-1), log_z_shift.unsqueeze(-1)
        mean_centred = mean_centred.unsqueeze(-1)

        blocks = _Blocks(ctx.batch, tgt, src, bias, ctx.budget)
        grad_q = torch.empty(q.shape, dtype=dtype, device=device)
        grad_k = torch.zeros(k.shape, dtype=dtype, device=device)
        grad_v = torch.zeros(v.shape, dtype=dtype, device=device)
        buffers = torch.empty(3, blocks.size, dtype=dtype, device=device)
        logit_buf, weight_buf, work_buf = buffers.unbind(0)
        for index, mask in blocks:
            keys_index = (index[0], index[1], slice(None))
            q_b = _flat(q, index)
            k_b = _flat(k, keys_index)
            n, r = q_b.shape[0], q_b.shape[1]
            logits = _view(logit_buf, n, r, src)
            weights = _view(weight_buf, n, r, src)
            work = _view(work_buf, n, r, src)
            torch.bmm(q_b, k_b.transpose(-1, -2), out=logits)
            logits.sub_(_flat(row_max, index))  # c − max
            if mask is None:
                torch.sub(logits, _flat(log_z_shift, index), out=weights)
            else:
                block = (mask.shape[0], -1, r, src)
                torch.add(logits.view(block), mask, out=weights.view(block))
                weights.sub_(_flat(log_z_shift, index))
            weights.exp_()  # α
            logits.sub_(_flat(mean_centred, index))  # t = c − ⟨c⟩
            if grad_output is not None:
                grad_out_b = _flat(grad_output, index)
                torch.bmm(grad_out_b, _flat(v, keys_index).transpose(-1, -2), out=work)
                work.sub_(_flat(delta, index))
            else:
                work.copy_(_flat(delta, index).expand_as(work)).neg_()
            work.addcmul_(logits, _flat(linear, index))
            if d_var is not None:
                work.addcmul_(logits.square_(), _flat(d_var, index))
            work.mul_(weights)  # ∂L/∂c
            torch.bmm(work, k_b, out=_flat(grad_q, index))
            _flat(grad_k, keys_index).baddbmm_(work.transpose(-1, -2), q_b)
            if grad_output is not None:
                _flat(grad_v, keys_index).baddbmm_(weights.transpose(-1, -2), grad_out_b)
        scale = ctx.scale
        if scale != 1.0:
            grad_q.mul_(scale)
        shape = ctx.batch
        return (
            grad_q.view(*shape, tgt, q.shape[-1]),
            grad_k.view(*shape, src, k.shape[-1]),
            grad_v.view(*shape, src, v.shape[-1]) if grad_output is not None else None,
            None,
            None,
            None,
        )
