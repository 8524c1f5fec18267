r"""Transformer blocks as dynamical mean field of asymmetric vector-spin systems, and the reference.

:class:`SpinTransformerBlock` (Bal, "Spin-model transformers", 2023). Softmax attention
couplings J_ij = softmax_j(τ cos(q_i, k_j)) (or softmax_j(q_i·k_j/√d)) are asymmetric, so the
block does not minimise a free energy; it runs the *dynamics* of a kinetic vector-spin model
probed by the normalised tokens x̂, in the dynamical (Plefka[t−1, t]) mean field of
:mod:`spinformer.physics.dynamical`:

.. math::

    m(0) = \varphi(W_V \hat x)\ \text{or}\ 0,\qquad
    m_i(t) = \varphi\Big(h_i + \sum_j J_{ij}\, m_j(t-1)\Big)
    \;[+\ \text{second-order correction}],

per head, with h = W_F x̂ (+ FFN(x̂) with ``ffn_field``) (+ the stream's own field) and φ the
large-D response with R² = d/2 − 1. The output is m(K) itself (the stream carried as
magnetizations: x enters h as φ⁻¹(x), or as x for the first block) or x + W_O m(K).
``steps=K`` runs K steps (from m(0) = 0, K = 1 is φ(h): the couplings are invisible, which a
learned start m(0) = φ(W_V x̂) fixes); ``steps=None`` returns the stationary state
m* = step(m*) from :mod:`spinformer.solvers` with the implicit backward. φ has slope ≤ β/2 and
rows of J sum to one, so the step is a contraction for β < 2 and the fixed point exists and is
unique there. Causal masking makes J lower-triangular, so m_i depends on tokens ≤ i only -- for
every K and at the fixed point.

The design options (``coupling``, ``norm``, ``start``, ``residual``, ``rope``) are the choices
published spin-model transformer work reports (Bal 2023 and its ``neqnn`` recipe); the defaults
are the best combination measured on the training tasks (:mod:`spinformer.experiments.training`),
and ``coupling="dot", norm="layer", start="zero", residual="add"`` is the first design.

:class:`TransformerBlock` is the standard pre-norm block (torch's scaled-dot-product attention +
GELU MLP) with the same interface; every benchmark and experiment measures against it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spinformer._validation import check_positive_int
from spinformer.nn import _native
from spinformer.nn._spin import (
    BlockState,
    HeadRMSNorm,
    PositiveBeta,
    allowed_keys,
    check_heads,
    check_overflow,
    check_steps,
    check_tokens,
    cosine_couplings,
    cosine_queries_keys,
    cosine_scale,
    cosine_scale_vjp,
    feed_forward,
    field_scale,
    head_rms,
    head_rms_vjp,
    merge_heads,
    relax,
    rotary,
    rotary_phases,
    softmax_couplings,
    split_heads,
)
from spinformer.nn.boltzmann import BoltzmannAttention
from spinformer.physics import vmf
from spinformer.physics.dynamical import vector_step, vector_step_vjp, vector_step_with_vjp

__all__ = ["AttentionBlock", "BoltzmannSelfAttention", "SpinTransformerBlock", "TransformerBlock"]

Coupling = Literal["dot", "cosine"]
Norm = Literal["layer", "rms"]
Start = Literal["zero", "learned"]
Residual = Literal["add", "field", "magnetization"]
COUPLINGS: tuple[str, ...] = ("dot", "cosine")
NORMS: tuple[str, ...] = ("layer", "rms")
STARTS: tuple[str, ...] = ("zero", "learned")
RESIDUALS: tuple[str, ...] = ("add", "field", "magnetization")


# torch's CPU flash attention and its backward (what scaled_dot_product_attention runs on the
# CPU), called directly so that the one step's node can hold the attention's saved tensors
_flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_flash_backward = getattr(
    torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None
)


def _unhooked(module: nn.Module) -> bool:
    """Whether no forward or backward hooks are registered on ``module`` (a fused node that
    skips its call must not skip hooks a user put there)."""
    return not (
        module._forward_hooks
        or module._forward_pre_hooks
        or module._backward_hooks
        or module._backward_pre_hooks
    )


def _plain_mlp(mlp: nn.Module) -> bool:
    """Whether ``mlp`` is Linear → GELU (erf) → Linear with biases, as
    :func:`~spinformer.nn._spin.feed_forward` builds it, with no hooks: :class:`_CosineOneStep`
    evaluates that form from its weights."""
    if type(mlp) is not nn.Sequential or len(mlp) != 3:
        return False
    first, act, second = mlp
    return (
        type(first) is nn.Linear
        and type(act) is nn.GELU
        and act.approximate == "none"
        and type(second) is nn.Linear
        and first.bias is not None
        and second.bias is not None
        and all(_unhooked(m) for m in (mlp, first, act, second))
    )


_SCRATCH = threading.local()

#: the largest scratch buffer kept between calls: glibc serves larger allocations with fresh
#: pages every time anyway (32 MiB is the most its mmap threshold moves up to)
_SCRATCH_LIMIT = 32 << 20


def _scratch(role: str, shape: torch.Size, like: Tensor) -> Tensor:
    """An uninitialised buffer of ``shape`` with ``like``'s dtype and device for a transient of a
    backward that never leaves it, kept per thread and ``role`` (one, the latest shape) for the
    next call. The one-step backward's transients are megabytes: a fresh allocation of that
    size is served by glibc with new pages, a page fault per 4 KiB at the first touch, whenever
    it has handed the last one's memory back to the system -- on a virtual machine several
    microseconds each."""
    kept = getattr(_SCRATCH, role, None)
    if (
        kept is not None
        and kept.shape == shape
        and kept.dtype == like.dtype
        and kept.device == like.device
    ):
        return kept
    buffer = like.new_empty(shape)
    if buffer.nbytes <= _SCRATCH_LIMIT:
        setattr(_SCRATCH, role, buffer)
    return buffer


class _CosineOneStep(torch.autograd.Function):
    r"""The whole one-step block with cosine couplings from the learned start on the CPU, as one
    autograd node: from the block input x (B, N, D),

    .. math::

        m = \varphi\Big(W_F\hat x + \mathrm{MLP}(\hat x) + c(x)
        + \sum_j \operatorname{softmax}_j(\tau\cos(q_i, k_j))\,\varphi(W_V \hat x)_j\Big)

    with x̂ the per-head RMS norm of x with the gain ``gain`` (H, d) (or ``x_norm`` given,
    normalised outside, with ``gain`` ``None``), the stacked weight [W_F; W_Q; W_K; W_V]
    (4D, D), the MLP Linear → GELU → Linear given by its weights and biases (or all four
    ``None``), and the stream's carrier c(x) by ``residual``: x itself (``"field"``), φ⁻¹(x)
    (``"magnetization"``) or none (``"add"``). The pieces are those of the unfused path --
    :func:`~spinformer.nn._spin.head_rms`, :func:`~spinformer.nn._spin.cosine_scale`,
    :func:`~spinformer.physics.vmf.phi_sum` and torch's CPU flash attention -- with their
    closed-form vector-Jacobian products. The four projections are one batched product into
    (4, B, N, H, d), so that every per-head quantity and its gradient is a contiguous block
    (strided writes cost several times contiguous ones) and the gradient of the four is one
    buffer (no concatenation); the field's gradient is shared by W_F x̂, the MLP and the
    carrier. One node instead of a chain through the norm, the MLP and the weights'
    concatenation: the gradients of x̂'s two uses are summed in one buffer by the products that
    make them, and the norm's backward adds into the carrier's gradient, where autograd would
    add full-size gradients. The per-head row math on each side of the attention (cosine scale
    with the rotary phases and the start before it, the field sum and φ after it, and their
    vector-Jacobian products) runs as one compiled pass over the rows where
    :mod:`spinformer.nn._native` takes the tensors (contiguous CPU float32/float64, kernel
    built, ``SPINFORMER_NATIVE`` not 0), else as the torch operations above; the two agree up
    to float rounding.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,
        x_norm: Tensor | None,
        gain: Tensor | None,
        weight: Tensor,
        w1: Tensor | None,
        b1: Tensor | None,
        w2: Tensor | None,
        b2: Tensor | None,
        beta: Tensor,
        temperature: Tensor,
        radius: float,
        rotation: tuple[Tensor, Tensor] | None,
        mask: Tensor | None,
        causal: bool,
        residual: str,
    ) -> Tensor:
        (batch, n, width), heads = x.shape, beta.shape[0]
        shape = (batch, n, heads, width // heads)
        own = x.reshape(shape)  # the stream per head
        norm_saved: list[Tensor] = []
        ctx.norm_native = False
        if gain is not None:
            x_norm, norm_saved, ctx.norm_native = head_rms(own, gain)
        assert x_norm is not None
        flat = x_norm.reshape(batch * n, width)
        parts = torch.bmm(flat.expand(4, -1, -1), weight.view(4, width, width).transpose(1, 2))
        parts = parts.view(4, *shape)
        fields, hidden, act = [], None, None
        if w1 is not None:
            hidden = torch.addmm(b1, flat, w1.t())
            act = F.gelu(hidden)
            fields.append(torch.addmm(b2, act, w2.t()).view(shape))
        if residual == "field":
            fields.append(own)
        stream = own if residual == "magnetization" else None
        b = beta[:, None]
        native = _native.usable(parts, temperature, beta, stream) and (
            rotation is None or rotation[0].is_contiguous()
        )
        if native:  # the same math, one compiled pass over the rows per side
            scaled, cosine, start, u_start = _native.cosine_step_forward(
                parts, temperature, beta, radius, rotation
            )
        else:
            scale = torch.stack([temperature / parts.shape[-1], torch.ones_like(temperature)])
            scaled, cosine = cosine_scale(parts[1:3], rotation, scale[:, None, None, :, None])
            start, _, u_start = vmf.phi_terms(parts[3], b, radius)
        q, k = scaled[0].transpose(1, 2), scaled[1].transpose(1, 2)
        start = start.transpose(1, 2)
        mixed, lse = _flash(q, k, start, 0.0, causal, attn_mask=mask, scale=1.0)
        if native:
            out, saved = _native.phi_sum_forward(
                parts[0], mixed.transpose(1, 2), fields, stream, beta, radius
            )
        else:
            out, saved = vmf.phi_sum(b, radius, stream, parts[0], *fields, mixed.transpose(1, 2))
        # the compiled backward has W_V x̂ from the start, the torch one keeps it
        value = None if native else parts[3]
        ctx.save_for_backward(
            gain, flat, weight, w1, w2, hidden, act, beta, stream, value, u_start, q, k, start,
            mixed, lse, *cosine, *saved, *norm_saved,
        )  # fmt: skip
        ctx.parts = parts.shape
        ctx.radius, ctx.rotation, ctx.mask, ctx.causal = radius, rotation, mask, causal
        ctx.residual, ctx.native, ctx.x_shape = residual, native, x.shape
        ctx.x_norm_shape = None if gain is not None else x_norm.shape
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        gain, flat, weight, w1, w2, hidden, act, beta, stream, value, u_start, q, k, start = (
            ctx.saved_tensors[:14]
        )
        mixed, lse, *rest = ctx.saved_tensors[14:]
        cosine, saved, norm_saved = rest[:3], rest[3:7], rest[7:]
        needs = ctx.needs_input_grad
        radius, b, width = ctx.radius, beta[:, None], flat.shape[-1]
        grads = _scratch("grads", ctx.parts, flat)  # every entry written below, none returned
        phi_vjp = _native.phi_sum_backward if ctx.native else vmf.phi_sum_vjp
        grad_field, grad_stream, grad_beta = phi_vjp(
            grad, beta if ctx.native else b, radius, stream, saved, needs[0], out=grads[0]
        )
        grad_q, grad_k, grad_start = _flash_backward(
            grad_field.transpose(1, 2), q, k, start, mixed, lse, 0.0, ctx.causal,
            attn_mask=ctx.mask, scale=1.0,
        )  # fmt: skip
        if ctx.native:
            grad_beta_start, per_query = _native.cosine_step_backward(
                grad_q.transpose(1, 2), grad_k.transpose(1, 2), grad_start.transpose(1, 2),
                cosine, ctx.rotation, start.transpose(1, 2), u_start, beta, radius, out=grads[1:],
            )  # fmt: skip
        else:
            _, _, grad_beta_start = vmf.phi_sum_vjp(
                grad_start.transpose(1, 2), b, radius, None, [value, u_start, None, None],
                out=grads[3],
            )  # fmt: skip
            coefficient = cosine[2]  # moving ∂L/∂(q, k) into place does the first product
            torch.mul(grad_q.transpose(1, 2), coefficient[0], out=grads[1])
            torch.mul(grad_k.transpose(1, 2), coefficient[1], out=grads[2])
            _, per_site = cosine_scale_vjp(grads[1:3], cosine, ctx.rotation, premultiplied=True)
            per_query = per_site[0]
        grad_temperature = per_query.sum_to_size(*beta.shape, 1).flatten()
        grad_beta = (grad_beta + grad_beta_start).sum_to_size(b.shape).flatten()
        rows = grads.view(4, -1, width)
        grad_flat = torch.mm(rows[0], weight[:width])
        for i in range(1, 4):
            grad_flat.addmm_(rows[i], weight[i * width : (i + 1) * width])
        grad_weight = torch.bmm(rows.transpose(1, 2), flat.expand(4, -1, -1)).view(weight.shape)
        grad_w1 = grad_b1 = grad_w2 = grad_b2 = None
        if w1 is not None:  # the MLP's field has the field's gradient rows[0]
            grad_w2, grad_b2 = torch.mm(rows[0].t(), act), rows[0].sum(0)
            grad_hidden = torch.mm(rows[0], w2, out=_scratch("hidden", hidden.shape, hidden))
            # GELU's rule in place
            torch.ops.aten.gelu_backward.grad_input(grad_hidden, hidden, grad_input=grad_hidden)
            grad_w1, grad_b1 = torch.mm(grad_hidden.t(), flat), grad_hidden.sum(0)
            grad_flat.addmm_(grad_hidden, w1)
        # the carrier's gradient: the field's for x as a field, φ⁻¹'s for a magnetization
        carrier = grad_field if ctx.residual == "field" else grad_stream
        grad_x_norm = grad_gain = None
        if gain is not None:
            grad_x, grad_gain = head_rms_vjp(
                grad_flat.view(ctx.parts[1:]), norm_saved, gain, ctx.norm_native, needs[0],
                needs[2], add=carrier,
            )  # fmt: skip
        else:
            grad_x_norm = grad_flat.view(ctx.x_norm_shape)
            grad_x = None if carrier is None or not needs[0] else carrier.clone()
        return (
            None if grad_x is None else grad_x.view(ctx.x_shape), grad_x_norm, grad_gain,
            grad_weight, grad_w1, grad_b1, grad_w2, grad_b2, grad_beta, grad_temperature,
            None, None, None, None, None,
        )  # fmt: skip


class SpinTransformerBlock(nn.Module):
    """Dynamical mean field of per-head asymmetric vector-spin systems (see the module docstring).

    Args:
        d_model, n_heads: width and heads; the head dimension d must be > 2.
        order: 1 (naive dynamical mean field) or 2 (Plefka second order, the dynamical TAP).
        steps: number of relaxation steps K, or ``None`` for the stationary state.
        causal: couple token i only to j ≤ i.
        beta: initial inverse temperature per head; ``learn_beta`` makes it trainable.
        ffn_field: add a position-wise MLP of the normalised tokens to the external field.
        ffn_mult: MLP hidden width multiplier.
        coupling: ``"dot"``, J = softmax(q·k/√d), or ``"cosine"``, J = softmax(τ cos(q, k)) with
            a learnable per-head τ > 0 starting at √d (bounded energies −τ cos ∈ [−τ, τ]).
        norm: ``"layer"`` (LayerNorm of x) or ``"rms"``: per-head RMSNorm whose gain starts at
            R/√d, so each head of the normalised tokens sits on the spin radius R.
        start: ``"zero"``, m(0) = 0, or ``"learned"``, m(0) = φ(W_V x̂): with K = 1 from m = 0
            the couplings receive no gradient, from a learned start they do. Explicit steps only:
            the stationary state (``steps=None``) does not depend on the start.
        residual: ``"add"``, out = x + W_O m; ``"field"``, out = m with x added to the external
            field (the stream becomes magnetizations); ``"magnetization"``, out = m with the
            conjugate field φ⁻¹(x) of an incoming magnetization x added to the external field,
            so a block whose other fields vanish returns its input.
        rope: rotate queries and keys by their positions (rotary embedding, Su et al. 2021), so
            the couplings see relative positions; needs an even head dimension.
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
        coupling: Coupling = "cosine",
        norm: Norm = "rms",
        start: Start = "learned",
        residual: Residual = "field",
        rope: bool = False,
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
        for name, value, choices in (
            ("coupling", coupling, COUPLINGS),
            ("norm", norm, NORMS),
            ("start", start, STARTS),
            ("residual", residual, RESIDUALS),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        if rope and self.head_dim % 2:
            raise ValueError(f"rope needs an even head dimension, got {self.head_dim}")
        self.rope = rope
        self.d_model, self.n_heads, self.order = d_model, n_heads, order
        self.steps, self.causal = steps, causal
        self.coupling, self.norm_kind, self.start, self.residual = coupling, norm, start, residual
        self.solver, self.tol, self.max_iter, self.implicit = solver, tol, max_iter, implicit
        self.radius = vmf.transformer_radius(self.head_dim)
        self.beta = PositiveBeta(beta, n_heads, learn_beta)
        self.norm = (
            nn.LayerNorm(d_model)
            if norm == "layer"
            else HeadRMSNorm(n_heads, self.head_dim, self.radius)
        )
        self.field = nn.Linear(d_model, d_model, bias=False)
        self.query = nn.Linear(d_model, d_model, bias=False)
        self.key = nn.Linear(d_model, d_model, bias=False)
        # the stationary state does not depend on where the relaxation starts: a learned start
        # would get no gradient there, so the fixed point always starts from step(0)
        learned = start == "learned" and steps is not None
        self.value = nn.Linear(d_model, d_model, bias=False) if learned else None
        self.out = nn.Linear(d_model, d_model) if residual == "add" else None
        self.temperature = (
            PositiveBeta(math.sqrt(self.head_dim), n_heads, True) if coupling == "cosine" else None
        )
        self.ffn = feed_forward(d_model, ffn_mult) if ffn_field else None

    def couplings(self, x_norm: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Asymmetric softmax couplings J (B, H, N, N) of normalised tokens, masked entries zero."""
        allowed = allowed_keys(x_norm.shape[1], self.causal, padding_mask, x_norm.device)
        q = split_heads(self.query(x_norm), self.n_heads)
        k = split_heads(self.key(x_norm), self.n_heads)
        if self.rope:
            q, k = rotary(q), rotary(k)
        if self.temperature is None:
            return softmax_couplings(q, k, allowed)
        return cosine_couplings(q, k, self.temperature(), allowed)

    def carrier(self, x: Tensor, beta: Tensor) -> Tensor | None:
        """The stream's own contribution to the field per head (B, H, N, d), or ``None``.

        ``residual="field"``: x itself; ``"magnetization"``: φ⁻¹(x) = 2x/(β(1 − |x|²/R²)), the
        field whose response at this block's β is x (|x| < R per head).
        """
        field, stream = self._stream(x)
        if stream is not None:
            return vmf.phi_inverse(stream.transpose(1, 2), beta[:, None, None], self.radius)
        return None if field is None else field.transpose(1, 2)

    def _stream(self, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """The stream x per head, token-major (B, N, H, d), as (a field term, a magnetization
        whose conjugate field φ⁻¹ joins the field), one of them or neither by ``residual``."""
        if self.residual == "add":
            return None, None
        heads = x.unflatten(-1, (self.n_heads, self.head_dim))
        return (heads, None) if self.residual == "field" else (None, heads)

    def _initial(self, x_norm: Tensor, field: Tensor, b: Tensor) -> Tensor:
        """m(0): zeros, or the learned start φ(W_V x̂) (B, H, N, d)."""
        if self.value is None:
            return torch.zeros_like(field)
        return vmf.phi(split_heads(self.value(x_norm), self.n_heads), b, self.radius)

    def _field(self, x: Tensor, x_norm: Tensor, linear: Tensor, beta: Tensor) -> Tensor:
        """External field per head (B, H, N, d): W_F x̂ (given as ``linear``) [+ FFN(x̂)] [+ the
        stream's carrier]."""
        if self.ffn is not None:
            linear = linear + self.ffn(x_norm)
        field = split_heads(linear, self.n_heads)
        carrier = self.carrier(x, beta)
        return field if carrier is None else field + carrier

    def _fused(self, x: Tensor) -> bool:
        """Whether the one step runs as :class:`_CosineOneStep`: cosine couplings from the
        learned start, on the CPU (torch's CPU flash attention), in float32 or float64, with
        the MLP field (if any) of :func:`~spinformer.nn._spin.feed_forward`'s form and no hooks
        on it."""
        return (
            self.value is not None
            and self.temperature is not None
            and _flash_backward is not None
            and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64)
            and x.shape[0] * x.shape[1] > 0
            and (self.ffn is None or _plain_mlp(self.ffn))
        )

    def _flash_mask(self, x: Tensor, padding_mask: Tensor | None) -> tuple[bool, Tensor | None]:
        """(causal, additive mask) for the flash attention call: the causal flag alone without
        padding, else the allowed pairs as 0 / −inf (what scaled-dot-product attention makes
        of a bool mask)."""
        if padding_mask is None:
            return self.causal, None
        allowed = allowed_keys(x.shape[1], self.causal, padding_mask, x.device)
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device)
        return False, mask.masked_fill_(~allowed, float("-inf"))

    def _one_step(self, x: Tensor, beta: Tensor, padding_mask: Tensor | None) -> Tensor:
        """m(1) = φ(h + J m(0)) (B, N, H, d) without forming J: Σ_j J_ij m_j(0) is softmax
        attention with m(0) as values (torch's fused scaled-dot-product attention). W_F, W_Q,
        W_K, W_V act as one matrix product, whose token-major layout (B, N, H, d) every per-head
        quantity keeps; the cosine queries and keys (:func:`cosine_queries_keys`) and the field
        sum with the stream's carrier and φ (:func:`~spinformer.physics.vmf.phi_fused`) are
        single autograd nodes with closed-form backwards -- on the CPU with cosine couplings the
        whole block from its input, norm and MLP included, is one (:class:`_CosineOneStep`).
        The numbers of the general path up to rounding."""
        width, shape = self.d_model, (self.n_heads, self.head_dim)
        b = beta[:, None]  # per head, against (B, N, H, d)
        if self._fused(x):
            weight = torch.cat([self.field.weight, self.query.weight, self.key.weight,
                                self.value.weight])  # fmt: skip
            mlp = (None,) * 4
            if self.ffn is not None:
                first, _, second = self.ffn
                mlp = (first.weight, first.bias, second.weight, second.bias)
            # the per-head RMS norm joins the node; any other norm runs before it
            inside = type(self.norm) is HeadRMSNorm and _unhooked(self.norm)
            x_norm = None if inside else self.norm(x)
            gain = self.norm.weight.view(shape) if inside else None
            rotation = (
                rotary_phases(x.shape[1], self.n_heads, x[0, 0, : self.head_dim])
                if self.rope
                else None
            )
            causal, mask = self._flash_mask(x, padding_mask)
            return _CosineOneStep.apply(
                x, x_norm, gain, weight, *mlp, beta, self.temperature(), self.radius, rotation,
                mask, causal, self.residual,
            )  # fmt: skip
        x_norm = self.norm(x)
        fields = []
        if self.value is None:  # J m(0) = 0: the couplings drop out
            fields.append(self.field(x_norm).unflatten(-1, shape))
        else:
            weight = torch.cat([self.field.weight, self.query.weight, self.key.weight,
                                self.value.weight])  # fmt: skip
            linear, qk, v = F.linear(x_norm, weight).split([width, 2 * width, width], dim=-1)
            fields.append(linear.unflatten(-1, shape))
        if self.ffn is not None:
            fields.append(self.ffn(x_norm).unflatten(-1, shape))
        extra, stream = self._stream(x)
        if extra is not None:
            fields.append(extra)
        if self.value is not None:
            qk = qk.unflatten(-1, (2 * self.n_heads, self.head_dim))
            if self.temperature is not None:
                q, k = cosine_queries_keys(qk, self.temperature(), self.rope)
                scale = 1.0
            else:
                q, k = qk.chunk(2, dim=-2)
                scale = None  # 1/√d
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            if self.rope and self.temperature is None:
                q, k = rotary(q), rotary(k)
            allowed = allowed_keys(x_norm.shape[1], self.causal, padding_mask, x_norm.device)
            start = vmf.phi_fused(v.unflatten(-1, shape), b, self.radius).transpose(1, 2)
            mixed = F.scaled_dot_product_attention(q, k, start, attn_mask=allowed, scale=scale)
            fields.append(mixed.transpose(1, 2))
        return vmf.phi_fused(fields[0], b, self.radius, *fields[1:], stream=stream)

    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, BlockState]:
        """x + W_O m (or m), m the dynamical mean-field magnetizations after K steps or at
        stationarity."""
        check_tokens(x, self.d_model, padding_mask, self.field.weight.dtype)
        beta = self.beta()
        if self.steps == 1 and self.order == 1 and not return_state:
            m = self._one_step(x, beta, padding_mask).flatten(-2)
            out = m if self.out is None else x + self.out(m)
            check_overflow(x, {"the block's output": out})
            return out
        x_norm = self.norm(x)
        b = beta[:, None, None]
        field = self._field(x, x_norm, self.field(x_norm), beta)
        if self.steps is None:  # per-head blocks: every solver step adds the field to J m
            field = field.contiguous()
        couplings = self.couplings(x_norm, padding_mask)
        check_overflow(
            x,
            {
                "LayerNorm(x)" if self.norm_kind == "layer" else "RMSNorm(x)": x_norm,
                "the fields β|h|/R": field_scale(field, beta, self.radius),
                "the couplings softmax(q·k)": couplings,
            },
        )

        squared = couplings * couplings if self.order == 2 else None  # J² once, not per step

        # the fixed point's one differentiable application f(z*) keeps its intermediates for the
        # closed-form (∂ step/∂m)ᵀ of the implicit backward's adjoint solve at the same z*
        last: list = []
        # the order-2 overlap matrix of iterations without autograd (the solver's, or explicit
        # steps in inference), allocated once; explicit steps under autograd build their own
        unrecorded = self.steps is None or not torch.is_grad_enabled()
        workspace = torch.empty_like(couplings) if self.order == 2 and unrecorded else None
        # the couplings part of the solver's latest evaluation: f(z*) at the same z* reuses it
        evaluated: list = []

        def step(m: Tensor) -> Tensor:
            if self.steps is not None or not torch.is_grad_enabled():
                keep = evaluated if self.steps is None else None
                return vector_step(
                    m, couplings, field, b, self.radius, self.order, squared, workspace, keep
                )
            known = evaluated[:]
            evaluated.clear()
            out, product = vector_step_with_vjp(
                m, couplings, field, b, self.radius, self.order, squared, known
            )
            last[:] = [m, product]
            return out

        def adjoint(m: Tensor) -> Callable[[Tensor], Tensor]:
            """y ↦ (∂ step/∂m)ᵀ y at m in closed form (the implicit backward's adjoint solve)."""
            if last and last[0] is m:
                product = last[1]
                last.clear()  # held by the adjoint solve only, not for the output's lifetime
                return product
            return vector_step_vjp(m, couplings, field, b, self.radius, self.order, squared)

        if self.steps is None:  # the solver starts from step(m(0)), m(0) = 0: no J m(0)
            # a start point only, which the solver detaches -- except for an empty batch, which
            # it returns as the solution (then with the graph of the rest of the block)
            with torch.set_grad_enabled(torch.is_grad_enabled() and field.numel() == 0):
                first = vector_step(None, couplings, field, b, self.radius, self.order, squared)
        else:
            first = self._initial(x_norm, field, b)
        m, converged, iterations, residual = relax(
            step, first, self.steps, self.solver, self.tol, self.max_iter, self.implicit, adjoint
        )
        workspace = None  # the iterations are done: step no longer holds the buffer
        evaluated.clear()
        out = merge_heads(m) if self.out is None else x + self.out(merge_heads(m))
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
        mlp = (nn.LayerNorm(d_model), feed_forward(d_model, ffn_mult)) if ffn_mult else (None, None)
        self.norm2, self.mlp = mlp

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


class BoltzmannSelfAttention(nn.Module):
    """:class:`~spinformer.nn.BoltzmannAttention` as causal/non-causal self-attention with the
    block interface ``(x, padding_mask, return_state)`` (padding_mask True = real token)."""

    def __init__(self, d_model: int, n_heads: int, causal: bool, learn_beta: bool) -> None:
        super().__init__()
        self.causal = causal
        self.attention = BoltzmannAttention(d_model, n_heads, learn_beta=learn_beta)

    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, BlockState]:
        key_padding = None if padding_mask is None else ~padding_mask.bool()
        out, _ = self.attention(
            x, key_padding_mask=key_padding, need_weights=False, is_causal=self.causal
        )
        return (out, BlockState(None, None)) if return_state else out
