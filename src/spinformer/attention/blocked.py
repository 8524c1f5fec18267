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
in cache. Each block holds complete rows, so nothing is rescaled online: the exponent is
shifted by the exact row maximum and the moments are centred two-pass sums, as in
:func:`~spinformer.attention.boltzmann_rows` (finite and accurate from β = 1e-6 to 1e6), and
turned into ln Z, U, S and C by the same :func:`~spinformer.attention.ensemble.row_terms`.

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

    The batch is viewed as (outer, inner) = (prod(batch[:-1]), batch[-1]); a block covers a
    contiguous range of the flattened batch: several whole outer entries, or one outer entry
    and a range of inner ones, or one (outer, inner) pair and a range of query rows.
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
        """Yield (flat slice, row slice, mask block of shape (b, h, r|1, S) or None)."""
        per_b, per_h, per_r = self.per
        for b0 in range(0, self.outer, per_b):
            b1 = min(b0 + per_b, self.outer)
            for h0 in range(0, self.inner, per_h):
                h1 = min(h0 + per_h, self.inner)
                flat = slice(b0 * self.inner + h0, (b1 - 1) * self.inner + h1)
                for r0 in range(0, self.tgt, per_r):
                    rows = slice(r0, min(r0 + per_r, self.tgt))
                    mask = None
                    if self.bias is not None:
                        mask = self.bias[b0:b1, h0:h1]
                        mask = mask[:, :, rows] if mask.shape[-2] > 1 else mask
                    yield flat, rows, mask


def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_j a_ij b_ij per row of (n, r, S) tensors, as one batched matrix-vector product."""
    n, r, s = a.shape
    return torch.bmm(a.view(n * r, 1, s), b.view(n * r, s, 1)).view(n, r, 1)


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
        flat = batch.numel()  # explicit: reshape(-1, ...) fails on 0 elements
        q = (queries * scale if scale != 1.0 else queries).reshape(flat, tgt, queries.shape[-1])
        q = q.contiguous()
        k = keys.reshape(flat, src, keys.shape[-1])
        v = values.reshape(flat, src, dim_v)
        blocks = _Blocks(batch, tgt, src, bias, budget)
        dtype, device = q.dtype, q.device
        output = torch.empty(flat, tgt, dim_v, dtype=dtype, device=device)
        stats = torch.empty(4, flat, tgt, 1, dtype=dtype, device=device)
        row_max, partition, first, second = stats.unbind(0)
        logit_buf = torch.empty(blocks.size, dtype=dtype, device=device)
        boltz_buf = torch.empty(blocks.size, dtype=dtype, device=device)
        work_buf = torch.empty(blocks.size, dtype=dtype, device=device)
        k_t = k.transpose(-1, -2)
        # values with a column of ones: one product gives Σ_j e_ij v_j and Z'_i = Σ_j e_ij
        v_ones = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
        for sl, rows, mask in blocks:
            q_b = q[sl, rows]
            n, r = q_b.shape[0], q_b.shape[1]
            logits = _view(logit_buf, n, r, src)  # c = βω
            boltz = _view(boltz_buf, n, r, src)
            work = _view(work_buf, n, r, src)
            mx = row_max[sl, rows]
            torch.bmm(q_b, k_t[sl], out=logits)
            if mask is None:
                torch.amax(logits, dim=-1, keepdim=True, out=mx)
                logits.sub_(mx)  # ℓ = c − max
                torch.exp(logits, out=boltz)
            else:
                block = (mask.shape[0], -1, r, src)
                torch.add(logits.view(block), mask, out=boltz.view(block))
                torch.amax(boltz, dim=-1, keepdim=True, out=mx)
                boltz.sub_(mx).exp_()
                logits.sub_(mx)  # ℓ = c − max, finite where the mask is −inf
            summed = torch.bmm(boltz, v_ones[sl])
            output[sl, rows] = summed[..., :dim_v]
            z = summed[..., dim_v:]
            partition[sl, rows] = z
            moment = _row_dot(boltz, logits)  # Σ e ℓ
            first[sl, rows] = moment
            logits.sub_(moment / z)  # t = c − ⟨c⟩
            torch.mul(boltz, logits, out=work)
            second[sl, rows] = _row_dot(work, logits)  # Σ e t²
        del logit_buf, boltz_buf, work_buf
        output.div_(partition)
        log_z_shift = partition.log().squeeze(-1)  # ln Z' = ln Z − max
        mean_centred = first.div_(partition).squeeze(-1)  # ⟨c⟩ − max
        variance = second.div_(partition).squeeze(-1)
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
        flat, tgt = q.shape[0], q.shape[1]
        src = k.shape[1]
        dtype, device = q.dtype, q.device
        zeros = torch.zeros(flat, tgt, dtype=dtype, device=device)
        d_log_z = zeros if grad_log_partition is None else grad_log_partition
        d_mean = zeros if grad_mean_logit is None else grad_mean_logit
        if grad_entropy is not None:
            d_log_z = d_log_z + grad_entropy
            d_mean = d_mean - grad_entropy
        d_var = None if grad_variance is None else grad_variance.unsqueeze(-1)
        delta = -(d_log_z + d_mean)
        linear = d_mean
        if grad_output is not None:
            grad_output = grad_output.reshape(flat, tgt, -1).contiguous()
            delta = delta + (grad_output * output).sum(-1)
        if d_var is not None:
            delta = delta + grad_variance * variance
            linear = linear + 2.0 * grad_variance
        delta, linear = delta.unsqueeze(-1), linear.unsqueeze(-1)
        row_max, log_z_shift = row_max.unsqueeze(-1), log_z_shift.unsqueeze(-1)
        mean_centred = mean_centred.unsqueeze(-1)

        blocks = _Blocks(ctx.batch, tgt, src, bias, ctx.budget)
        grad_q = torch.empty_like(q)
        grad_k = torch.zeros_like(k)
        grad_v = torch.zeros_like(v)
        logit_buf = torch.empty(blocks.size, dtype=dtype, device=device)
        boltz_buf = torch.empty(blocks.size, dtype=dtype, device=device)
        work_buf = torch.empty(blocks.size, dtype=dtype, device=device)
        k_t = k.transpose(-1, -2)
        v_t = v.transpose(-1, -2)
        for sl, rows, mask in blocks:
            q_b = q[sl, rows]
            n, r = q_b.shape[0], q_b.shape[1]
            logits = _view(logit_buf, n, r, src)
            weights = _view(boltz_buf, n, r, src)
            work = _view(work_buf, n, r, src)
            torch.bmm(q_b, k_t[sl], out=logits)
            logits.sub_(row_max[sl, rows])  # c − max
            if mask is None:
                torch.sub(logits, log_z_shift[sl, rows], out=weights)
            else:
                block = (mask.shape[0], -1, r, src)
                torch.add(logits.view(block), mask, out=weights.view(block))
                weights.sub_(log_z_shift[sl, rows])
            weights.exp_()  # α
            logits.sub_(mean_centred[sl, rows])  # t = c − ⟨c⟩
            if grad_output is not None:
                torch.bmm(grad_output[sl, rows], v_t[sl], out=work)
                work.sub_(delta[sl, rows])
            else:
                work.copy_(delta[sl, rows].expand_as(work)).neg_()
            work.addcmul_(logits, linear[sl, rows])
            if d_var is not None:
                work.addcmul_(logits.square_(), d_var[sl, rows])
            work.mul_(weights)  # ∂L/∂c
            torch.bmm(work, k[sl], out=grad_q[sl, rows])
            grad_k[sl].baddbmm_(work.transpose(-1, -2), q_b)
            if grad_output is not None:
                grad_v[sl].baddbmm_(weights.transpose(-1, -2), grad_output[sl, rows])
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
