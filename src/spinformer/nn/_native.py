"""The compiled row passes of the one-step cosine spin block (``cosine_step.c``).

Between its projections and its flash attention, the one step (:class:`~spinformer.nn.blocks.
_CosineOneStep`) does per-head elementwise math over (B, N, H, d) rows: the cosine scale of
queries and keys (:func:`~spinformer.nn._spin.cosine_scale`, with the rotary phases), the
learned start φ(W_V x̂) and the field sum with φ (:func:`~spinformer.physics.vmf.phi_sum`), and
their closed-form vector-Jacobian products. As torch operations that is tens of full-size passes
with per-head reductions; the kernel does each side in one pass over the rows. Same formulas,
same saved quantities, so the torch path and this one agree up to float rounding. The block's
per-head RMS norm (:class:`~spinformer.nn._spin.HeadRMSNorm`) runs the same way.

The library is built at first use by :mod:`spinformer._native`; :func:`library` is ``None`` (and
the callers keep the torch path) without a compiler or with ``SPINFORMER_NATIVE=0``, and
:func:`usable` refuses other devices, dtypes and non-contiguous tensors. A call splits its rows
among torch's intra-op threads (:func:`threads_for`; every function takes ``threads`` to set
the count), with the same numbers for every count.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from spinformer._native import build_library, compiler, native_disabled

__all__ = [
    "cosine_step_backward",
    "cosine_step_forward",
    "head_rms_backward",
    "head_rms_forward",
    "library",
    "phi_sum_backward",
    "phi_sum_forward",
    "threads_for",
    "usable",
]

_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p
_F64 = ctypes.c_double
_SUFFIX = {torch.float32: "_f32", torch.float64: "_f64"}
_SIGNATURES = {
    "spf_cosine_step_forward": [_PTR, *[_I64] * 4, _PTR, _PTR, _F64, _F64, *[_PTR] * 6, _I64],
    "spf_phi_sum_forward": [
        *[_I64] * 4,
        *[_PTR] * 2,
        *[_I64] * 3,
        *[_PTR] * 4,
        _F64,
        _F64,
        *[_PTR] * 4,
        _I64,
    ],
    "spf_phi_sum_backward": [*[_I64] * 3, *[_PTR] * 7, _F64, *[_PTR] * 3, _I64],
    "spf_cosine_step_backward": [*[_I64] * 4, *[_PTR] * 11, _F64, *[_PTR] * 3, _I64],
    "spf_head_rms_forward": [_PTR, *[_I64] * 3, _PTR, _F64, _PTR, _PTR, _I64],
    "spf_head_rms_backward": [*[_PTR] * 3, *[_I64] * 3, *[_PTR] * 4, _I64],
}

#: tokens per partial sum of the RMS norm's gain gradient (SPF_BLOCK in cosine_step.h)
_RMS_BLOCK = 32


#: the build's flags: threads from the OpenMP runtime torch uses (POSIX threads without it)
_FLAGS = ("-fopenmp",)


@functools.cache
def _load(flags: tuple[str, ...] = _FLAGS) -> tuple[ctypes.CDLL | None, str | None]:
    built, reason = build_library(
        "spinformer.nn", ("cosine_step.c",), ("cosine_step.h",), "nn", compiler(), flags
    )
    if built is None:
        return None, reason
    for name, arguments in _SIGNATURES.items():
        for suffix in _SUFFIX.values():
            function = getattr(built, name + suffix)
            function.restype = None
            function.argtypes = arguments
    return built, None


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or ``None`` when switched off or not buildable here."""
    return None if native_disabled() else _load()[0]


def usable(*tensors: Tensor | None) -> bool:
    """Whether the kernels can take these tensors: the library loads, and every tensor given
    is a contiguous CPU float32 or float64 tensor of the first one's dtype."""
    given = [t for t in tensors if t is not None]
    dtype = given[0].dtype
    return (
        dtype in _SUFFIX
        and all(t.device.type == "cpu" and t.dtype == dtype and t.is_contiguous() for t in given)
        and library() is not None
    )


def _call(name: str, dtype: torch.dtype, *arguments: object) -> None:
    lib = library()
    assert lib is not None
    getattr(lib, name + _SUFFIX[dtype])(*arguments)


#: elements (B N H d) per thread below which a kernel call starts no extra threads: starting
#: one costs tens of microseconds, a pass over this many rows takes a few hundred
GRAIN = 1 << 15


def threads_for(elements: int, threads: int | None = None) -> int:
    """The threads a kernel call over ``elements`` numbers per operand uses: ``threads`` if
    given, else torch's intra-op thread count, at most one per :data:`GRAIN` elements (one for
    small calls). The rows are split among them in contiguous ranges, each row's arithmetic
    unchanged, so the result is the same for every thread count."""
    if threads is not None:
        return max(1, threads)
    return max(1, min(torch.get_num_threads(), elements // GRAIN))


def _ptr(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _rows(t: Tensor) -> Tensor:
    """t (B, N, H, d) with unit stride along d (a copy only if not)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _phases(rotation: tuple[Tensor, Tensor] | None) -> Tensor | None:
    """The rotary phases e^{i n θ_a} (N, H, d/2) as (N, H, 2, d): the cosines repeated over
    each channel pair (c_a, c_a) and the signed sines (−s_a, s_a), so that the kernel rotates
    x by x ⊙ cos + swap(x) ⊙ sin with swap exchanging the channels of each pair."""
    if rotation is None:
        return None
    table = rotation[0]
    cached = _PHASES.get(id(table))
    if cached is not None and cached[0] is table and cached[2] == table._version:
        return cached[1]
    pairs = torch.view_as_real(table)  # (N, H, d/2, 2) = (c, s)
    cosine = pairs[..., :1].expand(pairs.shape)
    sine = torch.stack([-pairs[..., 1], pairs[..., 1]], dim=-1)
    phases = torch.stack([cosine, sine], dim=2).flatten(-2)
    if len(_PHASES) >= 16:
        _PHASES.pop(next(iter(_PHASES)))
    _PHASES[id(table)] = (table, phases, table._version)
    return phases


#: id of a rotary table -> (the table, its kernel phases, the table's version): the tables of
#: :func:`~spinformer.nn._spin.rotary_phases` are cached and never written, so their phases are
#: built once instead of in every forward and backward; an entry holds its table, so an id in
#: the dict is never reused by another tensor, and a table written since is rebuilt.
_PHASES: dict[int, tuple[Tensor, Tensor, int]] = {}


def cosine_step_forward(
    parts: Tensor, temperature: Tensor, beta: Tensor, radius: float,
    rotation: tuple[Tensor, Tensor] | None, threads: int | None = None,
) -> tuple[Tensor, list[Tensor], Tensor, Tensor]:  # fmt: skip
    """From the projections ``parts`` (4, B, N, H, d) = (W_F, W_Q, W_K, W_V) x̂: the scaled
    queries and keys (2, B, N, H, d) with the saved list of :func:`cosine_scale` but for the
    scaled queries and keys in the place of the rotated ones (:func:`cosine_step_backward`
    divides by the coefficient), inverse RMS, coefficient; and the start φ(W_V x̂) with its u."""
    _, batch, n, heads, d = parts.shape
    scaled = torch.empty_like(parts[1:3])
    inverse = parts.new_empty(2, batch, n, heads, 1)
    coefficient = torch.empty_like(inverse)
    start = torch.empty_like(parts[3])
    u_start = torch.empty_like(inverse[0])
    phases = _phases(rotation)
    _call("spf_cosine_step_forward", parts.dtype, parts.data_ptr(), batch, n, heads, d,
          temperature.contiguous().data_ptr(), beta.contiguous().data_ptr(), radius,
          torch.finfo(parts.dtype).eps, _ptr(phases), scaled.data_ptr(), inverse.data_ptr(),
          coefficient.data_ptr(), start.data_ptr(), u_start.data_ptr(),
          threads_for(start.numel(), threads))  # fmt: skip
    return scaled, [scaled, inverse, coefficient], start, u_start


def phi_sum_forward(
    linear: Tensor, mixed: Tensor, extras: Sequence[Tensor], stream: Tensor | None,
    beta: Tensor, radius: float, threads: int | None = None,
) -> tuple[Tensor, list[Tensor | None]]:  # fmt: skip
    """:func:`~spinformer.physics.vmf.phi_sum` of the fields ``linear`` + ``mixed`` + the
    ``extras`` (B, N, H, d each, at most two; ``mixed`` with any strides but unit stride along
    d) and the ``stream``. The saved list holds the response φ(θ) itself in the place of θ:
    :func:`phi_sum_backward` has θ = φ(θ)(1 + u)/β, so the forward writes no θ."""
    batch, n, heads, d = linear.shape
    if len(extras) > 2:
        raise ValueError(f"at most two extra fields, got {len(extras)}")
    extra, extra2 = [t.contiguous() for t in extras] + [None] * (2 - len(extras))
    mixed = _rows(mixed)
    out = torch.empty_like(linear)
    u = linear.new_empty(batch, n, heads, 1)
    scale = radial = None
    if stream is not None:
        scale, radial = torch.empty_like(u), torch.empty_like(u)
    _call("spf_phi_sum_forward", linear.dtype, batch, n, heads, d, linear.data_ptr(),
          mixed.data_ptr(), *mixed.stride()[:3], _ptr(extra), _ptr(extra2), _ptr(stream),
          beta.contiguous().data_ptr(), radius, torch.finfo(linear.dtype).eps,
          out.data_ptr(), u.data_ptr(), _ptr(scale), _ptr(radial),
          threads_for(out.numel(), threads))  # fmt: skip
    return out, [out, u, scale, radial]


def phi_sum_backward(
    grad: Tensor, beta: Tensor, radius: float, stream: Tensor | None,
    saved: list[Tensor | None], stream_grad: bool, out: Tensor, threads: int | None = None,
) -> tuple[Tensor, Tensor | None, Tensor]:  # fmt: skip
    """:func:`~spinformer.physics.vmf.phi_sum_vjp` (∂L/∂θ into ``out``, ∂L/∂stream, ∂L/∂β per
    site) from the saved list of :func:`phi_sum_forward`."""
    response, u, scale, radial = saved
    grad = grad.contiguous()
    heads, d = response.shape[-2:]
    grad_stream = torch.empty_like(response) if stream is not None and stream_grad else None
    grad_beta = torch.empty_like(u)
    _call("spf_phi_sum_backward", response.dtype, u.numel(), heads, d, grad.data_ptr(),
          response.data_ptr(), u.data_ptr(), _ptr(stream), _ptr(scale), _ptr(radial),
          beta.contiguous().data_ptr(), radius, out.data_ptr(), _ptr(grad_stream),
          grad_beta.data_ptr(), threads_for(response.numel(), threads))  # fmt: skip
    return out, grad_stream, grad_beta


def cosine_step_backward(
    grad_q: Tensor, grad_k: Tensor, grad_start: Tensor, cosine: list[Tensor],
    rotation: tuple[Tensor, Tensor] | None, start: Tensor, u_start: Tensor, beta: Tensor,
    radius: float, out: Tensor, threads: int | None = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The vector-Jacobian products of :func:`cosine_step_forward` from the gradients of the
    scaled queries, keys and the start (B, N, H, d, any strides with unit stride along d), the
    saved list of :func:`cosine_step_forward` and its start φ(W_V x̂) (the field W_V x̂ is
    start (1 + u)/β: what the attention's backward has just read replaces what the forward wrote
    long before):
    ∂L/∂(W_Q x̂, W_K x̂, W_V x̂) into ``out`` (3, B, N, H, d), and per site ∂L/∂β of the start
    and ∂L/∂s · s/τ of the queries (summed over the sites it is ∂L/∂τ)."""
    scaled, inverse, coefficient = cosine
    batch, n, heads, d = start.shape
    grads = [_rows(grad_q), _rows(grad_k), _rows(grad_start)]
    strides = (_I64 * 9)(*(s for g in grads for s in g.stride()[:3]))
    grad_beta, grad_tau = torch.empty_like(u_start), torch.empty_like(u_start)
    start = start.contiguous()  # the forward's (B, N, H, d): already so
    phases = _phases(rotation)
    _call("spf_cosine_step_backward", start.dtype, batch, n, heads, d, *(g.data_ptr() for g in grads),
          strides, scaled.contiguous().data_ptr(), inverse.data_ptr(), coefficient.data_ptr(),
          _ptr(phases), start.data_ptr(), u_start.data_ptr(), beta.contiguous().data_ptr(),
          radius, out.data_ptr(), grad_beta.data_ptr(), grad_tau.data_ptr(),
          threads_for(start.numel(), threads))  # fmt: skip
    return grad_beta, grad_tau


def head_rms_forward(
    x: Tensor, weight: Tensor, threads: int | None = None
) -> tuple[Tensor, Tensor]:
    """The per-head RMS norm y = g ⊙ x/rms(x) of x (..., H, d) with the gain g (H, d) (see
    :class:`~spinformer.nn._spin.HeadRMSNorm`), and 1/rms(x) (..., H, 1) for the backward."""
    heads, d = x.shape[-2:]
    out = torch.empty_like(x)
    inverse = x.new_empty(*x.shape[:-1], 1)
    tokens = x.numel() // (heads * d) if x.numel() else 0
    _call("spf_head_rms_forward", x.dtype, x.data_ptr(), tokens, heads, d, weight.data_ptr(),
          torch.finfo(x.dtype).eps, out.data_ptr(), inverse.data_ptr(),
          threads_for(x.numel(), threads))  # fmt: skip
    return out, inverse


def head_rms_backward(
    grad: Tensor, x: Tensor, inverse: Tensor, weight: Tensor, grad_x: bool, grad_weight: bool,
    threads: int | None = None, add: Tensor | None = None,
) -> tuple[Tensor | None, Tensor | None]:  # fmt: skip
    """The vector-Jacobian products of :func:`head_rms_forward`: ∂L/∂x (if ``grad_x``; plus
    ``add``, a contiguous tensor of x's shape, if given) and ∂L/∂g (if ``grad_weight``), the
    latter summed in fixed blocks of tokens (the same numbers for every thread count) and then
    over the blocks."""
    heads, d = x.shape[-2:]
    grad = grad.contiguous()
    tokens = x.numel() // (heads * d) if x.numel() else 0
    out = torch.empty_like(x) if grad_x else None
    partial = None
    if grad_weight:
        partial = x.new_empty(-(-tokens // _RMS_BLOCK), heads, d)
    _call("spf_head_rms_backward", x.dtype, grad.data_ptr(), x.data_ptr(), inverse.data_ptr(),
          tokens, heads, d, weight.data_ptr(), _ptr(out), _ptr(add), _ptr(partial),
          threads_for(x.numel(), threads))  # fmt: skip
    return out, None if partial is None else partial.sum(0)
