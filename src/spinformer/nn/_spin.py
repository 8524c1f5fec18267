r"""Shared pieces of the spin-model modules: input checks, masks, softmax couplings, state record.

Couplings follow Bal ("Transformers are secretly collectives of spin systems", 2021): per head, J_ij = softmax_j(β_att q_i·k_j) with
q = x W_Qᵀ, k = x W_Kᵀ and β_att = 1/√d_head, so row i is the Boltzmann distribution of
ensemble i. Masked entries (causal j > i, padded keys) are exactly zero; a row with no allowed
key is an error rather than a NaN.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from spinformer._validation import check_finite, check_positive_int, describe
from spinformer.nn import _native
from spinformer.solvers import fixed_point

__all__ = [
    "BlockState",
    "HeadRMSNorm",
    "allowed_keys",
    "check_heads",
    "check_tokens",
    "cosine_couplings",
    "cosine_queries_keys",
    "softmax_couplings",
]


@dataclass(frozen=True)
class BlockState:
    """Physics of one module's forward pass (``return_state=True``).

    Attributes:
        magnetization: per-head magnetizations (B, H, N, d) (``None`` for the plain transformer).
        couplings: per-head couplings J (B, H, N, N) as used by the spin system.
        converged: per (batch, head) spin system, bool (B, H), or ``None`` for explicit steps.
        iterations: iterations used per spin system (B, H), or the fixed number of steps.
        residual: final relative fixed-point residual (B, H), or ``None``.
        free_energy: F = −ln Z/β summed over heads (B,), where an equilibrium free energy exists.
        beta: inverse temperature per head (H,).
    """

    magnetization: Tensor | None
    couplings: Tensor | None
    converged: Tensor | None = None
    iterations: Tensor | None = None
    residual: Tensor | None = None
    free_energy: Tensor | None = None
    beta: Tensor | None = None


def check_steps(steps: int | None) -> None:
    """``steps``: ``None`` (solve to the fixed point) or a positive number of iterations."""
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be None (fixed point) or a positive integer, got {steps!r}")


def relax(
    update: Callable[[Tensor], Tensor],
    start: Tensor,
    steps: int | None,
    solver: str,
    tol: float,
    max_iter: int,
    implicit: bool,
    vjp: Callable[[Tensor], Callable[[Tensor], Tensor]] | None = None,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
    """Per-head magnetizations (B, H, N, d): ``steps`` applications of ``update`` to ``start``,
    or (``steps=None``) its fixed point from ``start`` by :func:`spinformer.solvers.fixed_point`
    over the (B, H) spin systems. Returns (m, converged, iterations, residual) for
    :class:`BlockState`; converged and residual are ``None`` for explicit steps. ``vjp`` is the
    closed-form adjoint product of ``update`` for the implicit backward (see ``fixed_point``).
    """
    if steps is not None:
        m = start
        for _ in range(steps):
            m = update(m)
        return m, None, torch.full(start.shape[:2], steps, device=start.device), None
    result = fixed_point(
        update,
        start,
        method=solver,
        tol=tol,
        max_iter=max_iter,
        batch_dims=2,
        implicit=implicit,
        vjp=vjp,
    )
    return result.solution, result.converged, result.iterations, result.residual


def check_heads(d_model: int, n_heads: int, min_head_dim: int = 1) -> int:
    """Validate the width/heads split and return the head dimension."""
    check_positive_int(d_model, "d_model")
    check_positive_int(n_heads, "n_heads")
    if d_model % n_heads:
        raise ValueError(f"d_model must be divisible by n_heads, got {d_model} and {n_heads}")
    head = d_model // n_heads
    if head < min_head_dim:
        raise ValueError(
            f"head dimension d_model/n_heads must be > 2 for the radius convention R^2 = D/2 - 1, "
            f"got {head}"
        )
    return head


def check_tokens(
    x: Tensor, d_model: int, padding_mask: Tensor | None, dtype: torch.dtype | None = None
) -> None:
    """Raise on wrong shapes, a dtype other than the module's, NaN/inf inputs or a bad mask.

    ``dtype`` is the module's parameter dtype: torch would fail later in a matrix product with
    a message about its internal operands, so a mismatch is named here.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(
            f"x must be a floating tensor of shape (B, N, {d_model}), got {describe(x)}"
        )
    if x.ndim != 3 or x.shape[-1] != d_model:
        raise ValueError(f"x must have shape (B, N, {d_model}), got {tuple(x.shape)}")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(
            f"x must have the module's dtype {dtype}, got {x.dtype}; convert x (x.to({dtype}))"
            f" or the module (module.to({x.dtype}))"
        )
    check_finite(x, "x")
    if padding_mask is not None and (
        padding_mask.shape != x.shape[:2] or padding_mask.dtype != torch.bool
    ):
        raise ValueError(
            f"padding_mask must be a bool tensor of shape {tuple(x.shape[:2])} "
            f"(True = real token), got {padding_mask.dtype} {tuple(padding_mask.shape)}"
        )


def check_overflow(x: Tensor, quantities: dict[str, Tensor]) -> None:
    """Raise, naming the user's ``x``, when a quantity computed from finite x is not finite.

    Finite tokens can still overflow inside a module (fields |W x|², scores q·k, LayerNorm of
    entries near the dtype's maximum). Unchecked, the output would be NaN -- or 0, where a
    response like φ(θ) = βθ/(1 + √(1 + β²|θ|²/R²)) divides by an infinite norm -- or a solver
    would reject its own start point under an internal name. One host sync for all quantities,
    and one pass over each: a finite sum means every entry is finite (a NaN or ±inf entry makes
    the sum NaN or ±inf); only a non-finite sum, which finite entries can also give by
    overflowing, looks at the entries.
    """
    sums = torch.stack([t.sum(dtype=x.dtype) for t in quantities.values()])
    if bool(torch.isfinite(sums).all()):
        return
    flags = torch.stack([torch.isfinite(t).all() for t in quantities.values()])
    if bool(flags.all()):
        return
    bad = [name for name, ok in zip(quantities, flags.tolist(), strict=True) if not ok]
    largest = float(x.detach().abs().amax()) if x.numel() else 0.0
    verb = "overflows" if len(bad) == 1 else "overflow"
    raise ValueError(
        f"x is too large for {x.dtype}: {' and '.join(bad)} {verb} (max |x| = {largest:.3g});"
        " rescale x or use float64"
    )


def field_scale(field: Tensor, beta: Tensor, radius: float) -> Tensor:
    """4β²|h|²/R² per site for fields (B, H, N, d) and β (H,): bounds β²|θ|²/R² in φ while the
    local field θ = h + Σ J m stays within 2|h| (|m| < R); finite iff φ can be evaluated."""
    scaled = torch.linalg.vector_norm(field * (beta[:, None, None] / radius), dim=-1)
    return 4.0 * scaled.square_()


def allowed_keys(
    n: int, causal: bool, padding_mask: Tensor | None, device: torch.device
) -> Tensor | None:
    """Bool (B or 1, 1, N, N) of allowed (query, key) pairs, or ``None`` when all are allowed.

    Raises if some query row would have no allowed key (an empty Boltzmann ensemble).
    """
    if padding_mask is None:  # a causal row keeps its own token
        return _causal_mask(n, device) if causal else None
    allowed = padding_mask[:, None, None, :]
    if causal:
        allowed = _causal_mask(n, device) & allowed
    if n > 0 and not bool(allowed.any(-1).all()):
        raise ValueError(
            "the masks leave some query row with no key to attend to (e.g. a padded first token "
            "under a causal mask); every row must keep at least one key"
        )
    return allowed


@functools.lru_cache(maxsize=16)
def _causal_mask(n: int, device: torch.device) -> Tensor:
    """Bool (1, 1, N, N), True for key j ≤ query i (built once per length and device)."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()[None, None]


def softmax_couplings(q: Tensor, k: Tensor, allowed: Tensor | None) -> Tensor:
    """J = softmax(q kᵀ/√d) over keys with masked entries exactly zero; q, k (B, H, N, d)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1)


def cosine_couplings(q: Tensor, k: Tensor, temperature: Tensor, allowed: Tensor | None) -> Tensor:
    """J = softmax_j(τ cos(q_i, k_j)) per head, τ (H,) > 0; q, k (B, H, N, d), masked entries 0.

    Row i is the Boltzmann distribution of ensemble i over keys with energies −cos(q_i, k_j) at
    inverse temperature τ: bounded energies, so τ alone sets how sharp the couplings can get.
    """
    eps = torch.finfo(q.dtype).eps
    # τ joins the queries' per-site scale (N × d), not the N × N scores: one full N × N pass
    # fewer forward and three fewer backward (the scaling, and the product and sum for ∂L/∂τ)
    q_hat = q * (temperature[:, None, None] / q.norm(dim=-1, keepdim=True).clamp_min(eps))
    k_hat = k / k.norm(dim=-1, keepdim=True).clamp_min(eps)
    scores = q_hat @ k_hat.transpose(-1, -2)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1)


def rotary(t: Tensor, base: float = 10_000.0) -> Tensor:
    """Rotate channel pairs (2a, 2a+1) of t (B, H, N, d) by the angle n·base^(−2a/d) at position n.

    Rotary position embedding (Su et al., "RoFormer", 2021): q_i·k_j of rotated vectors depends on
    the positions through i − j only. d must be even. Computed as one complex product.
    """
    if t.dtype not in (torch.float32, torch.float64):  # no complex type for half precision
        cos, sin = _rotation(t.shape[-2], t.shape[-1], base, t.device, torch.float32, False)
        pairs = t.unflatten(-1, (-1, 2))
        even, odd = pairs[..., 0], pairs[..., 1]
        cos, sin = cos.to(t.dtype), sin.to(t.dtype)
        return torch.stack([even * cos - odd * sin, even * sin + odd * cos], -1).flatten(-2)
    rotation = _rotation(t.shape[-2], t.shape[-1], base, t.device, t.dtype, True)
    pairs = torch.view_as_complex(t.unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(pairs * rotation).flatten(-2)


@functools.lru_cache(maxsize=16)
def _rotation(
    n: int, d: int, base: float, device: torch.device, dtype: torch.dtype, complex_: bool
):
    """e^{i n θ_a} (N, d/2) as a complex tensor, or its (cos, sin)."""
    power = torch.arange(0, d, 2, device=device, dtype=torch.float64) / d
    angles = torch.arange(n, device=device, dtype=torch.float64)[:, None] * base**-power
    if complex_:
        return torch.polar(torch.ones_like(angles), angles).to(
            torch.complex128 if dtype == torch.float64 else torch.complex64
        )
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _inverse_rms(x: Tensor) -> Tensor:
    """1/rms(x) = 1/√(|x|²/d + eps) over the last axis of width d (eps of the dtype, as torch's
    RMSNorm), keeping that axis as size one."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # one pass, no full-size buffer
    return norm.square_().div_(x.shape[-1]).add_(torch.finfo(x.dtype).eps).rsqrt_()


def head_rms(x: Tensor, weight: Tensor) -> tuple[Tensor, list[Tensor], bool]:
    """y = g ⊙ x/rms(x) per head of x (..., H, d) with the gain g (H, d), without autograd:
    (y, what :func:`head_rms_vjp` needs, whether the compiled rows computed it)."""
    if _native.usable(x, weight):
        out, inverse = _native.head_rms_forward(x, weight)
        return out, [x, inverse], True
    inverse = _inverse_rms(x)
    normed = x * inverse
    return normed * weight, [normed, inverse], False


def head_rms_vjp(
    grad: Tensor,
    saved: list[Tensor],
    weight: Tensor,
    native: bool,
    grad_x: bool = True,
    grad_weight: bool = True,
    add: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None]:
    """The vector-Jacobian products of :func:`head_rms` in closed form (see :class:`_HeadRMS`):
    ∂L/∂x (if ``grad_x``; plus ``add``, a contiguous tensor of x's shape, if given), a fresh
    tensor, and ∂L/∂g (if ``grad_weight``)."""
    if native:
        x, inverse = saved
        return _native.head_rms_backward(grad, x, inverse, weight, grad_x, grad_weight, add=add)
    normed, inverse = saved
    out = grad_weight_sum = None
    # fresh buffers are reused in place: fewer allocations of full-size tensors
    product = grad * normed
    if grad_weight:
        grad_weight_sum = product.sum_to_size(weight.shape)
    if grad_x:
        along = product.mul_(weight).mean(-1, keepdim=True)  # ĝ·x̂/d
        out = (grad * weight).addcmul_(normed, along, value=-1.0).mul_(inverse)
        if add is not None:
            out.add_(add)
    return out, grad_weight_sum


class _HeadRMS(torch.autograd.Function):
    """y = g ⊙ x/rms(x) per head, x (..., H, d), g (H, d), with the closed-form backward
    ∂L/∂x = (ĝ − x̂ (ĝ·x̂)/d)/rms(x), ĝ = g ⊙ ∂L/∂y, x̂ = x/rms(x) (one autograd node instead of
    a chain through the mean, the root and the products). Where :mod:`spinformer.nn._native`
    takes the tensors, each side is one compiled pass over the rows (the same formulas)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:  # type: ignore[override]
        out, saved, ctx.native = head_rms(x, weight)
        ctx.save_for_backward(*saved, weight)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        *saved, weight = ctx.saved_tensors
        return head_rms_vjp(grad, saved, weight, ctx.native, *ctx.needs_input_grad)


class HeadRMSNorm(nn.Module):
    """x̂ = g ⊙ x_h/rms(x_h) per head h of width d, the gain g starting at R/√d so |x̂_h| = R."""

    def __init__(self, n_heads: int, head_dim: int, radius: float) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        self.weight = nn.Parameter(torch.full((n_heads * head_dim,), radius / math.sqrt(head_dim)))

    def forward(self, x: Tensor) -> Tensor:
        shape = (self.n_heads, self.head_dim)
        return _HeadRMS.apply(x.unflatten(-1, shape), self.weight.view(shape)).flatten(-2)


class _CosineQueriesKeys(torch.autograd.Function):
    """Queries and keys of cosine couplings for one fused attention call: per head q̂ τ/d and k̂
    with v̂ = v/rms(v) = √d v/|v| (so q̂·k̂ τ/d = τ cos(q, k)), after an optional rotary rotation.
    The vector-Jacobian products in closed form: the rotation's is the opposite rotation, and
    that of v ↦ s v̂ is s (g − v̂ (g·v̂)/d)/rms(v)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, qk: Tensor, rotation: tuple[Tensor, Tensor] | None, temperature: Tensor
    ) -> tuple[Tensor, Tensor]:
        n_heads = temperature.shape[0]
        scale = torch.cat([temperature / qk.shape[-1], temperature.new_ones(n_heads)])[:, None]
        scaled, saved = cosine_scale(qk, rotation, scale)
        ctx.save_for_backward(*saved)
        ctx.rotation = rotation
        # one product over both halves (contiguous rows), returned as two views
        return scaled.split(n_heads, dim=-2)

    @staticmethod
    def backward(ctx, grad_q: Tensor, grad_k: Tensor) -> tuple[Tensor | None, None, Tensor | None]:  # type: ignore[override]
        grad = torch.cat([grad_q, grad_k], dim=-2)  # fresh: the gradient is built in it in place
        grad_qk, per_site = cosine_scale_vjp(
            grad, ctx.saved_tensors, ctx.rotation, ctx.needs_input_grad[0]
        )
        n_heads = grad_q.shape[-2]
        grad_temperature = per_site[..., :n_heads, :].sum_to_size(n_heads, 1).flatten()
        return grad_qk, None, grad_temperature if ctx.needs_input_grad[2] else None


def cosine_scale(
    qk: Tensor, rotation: tuple[Tensor, Tensor] | None, scale: Tensor
) -> tuple[Tensor, list[Tensor]]:
    """The forward of :func:`cosine_queries_keys` without autograd, in any layout of the heads:
    (s v̂ per head, v̂ = v/rms(v) of the (rotated) qk (..., d), s the per-head ``scale``
    (τ/d for queries, 1 for keys) broadcast against (..., 1); what :func:`cosine_scale_vjp`
    needs)."""
    if rotation is not None:
        qk = torch.view_as_real(_complex_pairs(qk) * rotation[0]).flatten(-2)
    inverse = _inverse_rms(qk)
    coefficient = inverse * scale
    return qk * coefficient, [qk, inverse, coefficient]


def cosine_scale_vjp(
    grad: Tensor,
    saved: list[Tensor],
    rotation: tuple[Tensor, Tensor] | None,
    qk_grad: bool = True,
    premultiplied: bool = False,
) -> tuple[Tensor | None, Tensor]:
    """The vector-Jacobian products of :func:`cosine_scale` in closed form (see
    :class:`_CosineQueriesKeys`), from ``grad``, a fresh buffer that becomes ∂L/∂qk in place
    (or ``None`` without ``qk_grad``), and ∂L/∂s · s/τ per head and site (..., 1): summed over
    the queries' sites it is ∂L/∂τ. ``premultiplied``: ``grad`` already holds the incoming
    gradient times the saved per-site coefficient s/rms (its first term), e.g. written there
    by the product that moved it into place."""
    rotated, inverse, coefficient = saved
    d = rotated.shape[-1]
    along = (rotated * grad).sum(-1, keepdim=True)
    if premultiplied:  # along = s/rms · (v·grad): back to v·grad below
        along.div_(coefficient)
    grad_qk = None
    if qk_grad:
        radial = coefficient * inverse * inverse * along / d
        grad_qk = grad if premultiplied else grad.mul_(coefficient)
        grad_qk.addcmul_(rotated, radial, value=-1.0)
        if rotation is not None:
            torch.view_as_complex(grad_qk.unflatten(-1, (-1, 2))).mul_(rotation[1])
    return grad_qk, along.mul_(inverse).div_(d)


def _complex_pairs(t: Tensor) -> Tensor:
    """Channel pairs (2a, 2a+1) of t (..., d) as complex numbers (..., d/2), a view where the
    layout allows."""
    pairs = t.unflatten(-1, (-1, 2))
    strides = pairs.stride()
    if strides[-1] != 1 or pairs.storage_offset() % 2 or any(s % 2 for s in strides[:-1]):
        pairs = pairs.contiguous()
    return torch.view_as_complex(pairs)


@functools.lru_cache(maxsize=16)
def _rotation_heads(
    n: int, heads: int, d: int, base: float, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """The rotary phases e^{±i n θ_a} repeated over the heads, (N, heads, d/2) each, so that
    a token-major (B, N, heads, d/2) product runs over contiguous rows."""
    rotation = _rotation(n, d, base, device, dtype, True)[:, None].expand(n, heads, d // 2)
    return rotation.contiguous(), rotation.conj().resolve_conj()


def rotary_phases(
    n: int, heads: int, like: Tensor, base: float = 10_000.0
) -> tuple[Tensor, Tensor]:
    """The rotary phases (e^{i n θ_a}, e^{−i n θ_a}), (N, heads, d/2) each, of token-major
    queries and keys (B, N, heads, d) of ``like``'s head width d, device and float32/float64
    dtype, for :func:`cosine_scale` (cached)."""
    return _rotation_heads(n, heads, like.shape[-1], base, like.device, like.dtype)


def cosine_queries_keys(
    qk: Tensor, temperature: Tensor, rope: bool, base: float = 10_000.0
) -> tuple[Tensor, Tensor]:
    """(q̂ τ/d, k̂), each (B, N, H, d), from the queries and keys of H heads side by side, qk
    (B, N, 2H, d), and the per-head τ (H,): their products are the scores τ cos(q_i, k_j) of
    :func:`cosine_couplings` (scale 1 in a fused attention call); ``rope`` rotates both first
    (:func:`rotary`). v̂ = v/rms(v) with torch's RMSNorm eps, so |v̂| = √d."""
    rotation = None
    if rope:
        if qk.dtype in (torch.float32, torch.float64):
            rotation = rotary_phases(qk.shape[-3], qk.shape[-2], qk, base)
        else:  # no complex type for half precision
            qk = rotary(qk.transpose(-3, -2)).transpose(-3, -2)
    return _CosineQueriesKeys.apply(qk, rotation, temperature)


def feed_forward(d_model: int, ffn_mult: int) -> nn.Sequential:
    """The channel-mixing MLP Linear(D, mD) → GELU → Linear(mD, D) shared by every block."""
    return nn.Sequential(
        nn.Linear(d_model, ffn_mult * d_model),
        nn.GELU(),
        nn.Linear(ffn_mult * d_model, d_model),
    )


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """(B, N, H·d) -> (B, H, N, d)."""
    b, n, width = x.shape
    return x.reshape(b, n, n_heads, width // n_heads).transpose(1, 2)  # no -1: B or N may be 0


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, N, d) -> (B, N, H·d)."""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class PositiveBeta(nn.Module):
    """Per-head inverse temperature β = exp(log β) > 0, optionally learnable."""

    def __init__(self, beta: float, n_heads: int, learnable: bool) -> None:
        super().__init__()
        if not (isinstance(beta, int | float) and math.isfinite(beta) and beta > 0):
            raise ValueError(f"beta must be a positive finite number, got {beta!r}")
        log_beta = torch.full((n_heads,), math.log(beta))
        if learnable:
            self.log_beta = nn.Parameter(log_beta)
        else:
            self.register_buffer("log_beta", log_beta)

    def forward(self) -> Tensor:
        return self.log_beta.exp()
