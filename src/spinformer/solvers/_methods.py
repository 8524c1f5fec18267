r"""Picard (damped) iteration, its step-length variant and Anderson acceleration on (B, n) iterates.

All keep per-sample state: a sample whose residual is below ``tol`` keeps its solution and
stops counting iterations while the others go on, and so does a sample whose f(z) is no longer
finite (it keeps its last finite iterate and is reported as not converged); the whole batch is
checked for completion at the check points of :class:`~spinformer.solvers.SolverSettings`.
Tensors that autograd needs are never updated in place, so ``implicit=False`` can
differentiate through them.

Anderson (type II, memory m; Walker & Ni 2011) extrapolates from the last m iterates:
α = argmin ‖Σ_k α_k G_k‖ subject to Σ_k α_k = 1 with G_k = f(z_k) − z_k, solved as a small
bordered linear system per sample (with Tikhonov regularisation λ), then
z ← d Σ α_k f(z_k) + (1 − d) Σ α_k z_k.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from spinformer.solvers._core import (
    SolverOutput,
    SolverSettings,
    register_solver,
    relative_residual,
)

__all__ = ["anderson", "picard", "picard_step"]


Map = Callable[[Tensor], Tensor]


def _finish(g: Map, best: Tensor, tol: float, iterations: Tensor) -> SolverOutput:
    residual = relative_residual(best, g(best))
    return SolverOutput(best, residual <= tol, iterations, residual)


@register_solver("picard")
def picard(g: Map, z0: Tensor, settings: SolverSettings) -> SolverOutput:
    """Damped fixed-point iteration z ← (1 − d) z + d g(z)."""
    damping, tol = settings.damping, settings.tol
    z = z0
    done = torch.zeros(z0.shape[0], dtype=torch.bool, device=z0.device)
    iterations = torch.zeros(z0.shape[0], dtype=torch.long, device=z0.device)
    stopped = done  # converged, or diverged (f(z) not finite: z is the last finite iterate)
    for k in range(settings.max_iter):
        fz = g(z)
        residual = relative_residual(z, fz)
        done = done | (residual <= tol)
        stopped = stopped | done | torch.isinf(residual)
        iterations = iterations + (~stopped).long()
        step = (1.0 - damping) * z + damping * fz if damping != 1.0 else fz
        z = torch.where(stopped[:, None], z, step)
        if settings.all_stopped(k + 1, stopped):
            break
    return _finish(g, z, tol, iterations)


def _put(buffer: Tensor, slot: int, value: Tensor) -> Tensor:
    """``buffer`` (m, B, ...) with ``buffer[slot] = value``: in place without autograd, a new
    tensor with it (the old one may be saved for backward)."""
    if torch.is_grad_enabled():
        index = torch.tensor([slot], device=buffer.device)
        return buffer.index_copy(0, index, value.unsqueeze(0))
    buffer[slot] = value
    return buffer


def _select(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Rows of ``a`` where ``mask`` (B,), else of ``b``; written into ``b`` without autograd
    (``b`` itself, not written, when it is ``a``)."""
    if a is b:
        return b
    if torch.is_grad_enabled():
        return torch.where(mask[:, None], a, b)
    return torch.where(mask[:, None], a, b, out=b)


@register_solver("anderson")
def anderson(
    g: Map,
    z0: Tensor,
    settings: SolverSettings,
    memory: int = 5,
    regularization: float = 1e-8,
) -> SolverOutput:
    """Anderson acceleration with ``memory`` past iterates (see the module docstring).

    The last iterates live in ring buffers of f(z_k) and G_k = f(z_k) − z_k, and the Gram matrix
    G Gᵀ gains one row per iteration, so an iteration costs O(memory · n) per sample besides g.
    Without autograd the buffers, the best iterate and the next iterate are written in place.
    A slot of a ring buffer is one contiguous (B, n) block (the buffers are (memory, B, n)):
    writing a slot, and the products over the history, run faster than over (B, memory, n).
    """
    tol, damping = settings.tol, settings.damping
    batch, n = z0.shape
    size = max(memory, 2)
    images = z0.new_empty(size, batch, n)  # f(z_k); slots are read once written
    gaps = z0.new_empty(size, batch, n)  # G_k = f(z_k) − z_k
    gram = z0.new_zeros(batch, size, size)

    def record(slot: int, z: Tensor, fz: Tensor, filled: int) -> Tensor:
        """Store (z, f(z)) at ``slot`` of a history with ``filled`` slots, with its row and
        column of the Gram matrix; return the residual."""
        nonlocal images, gaps, gram
        if torch.is_grad_enabled():
            gap = fz - z
            images, gaps = _put(images, slot, fz), _put(gaps, slot, gap)
        else:  # no new (B, n) tensors: on the CPU each costs its page faults
            gap = torch.sub(fz, z, out=gaps[slot])
            images[slot].copy_(fz)
        # G_slot · G_j, (B, filled): a row times the transposed history (4x faster on the CPU
        # than history times a column)
        row = (gap[:, None] @ gaps[:filled].permute(1, 2, 0))[:, 0]
        if torch.is_grad_enabled():
            index = torch.tensor([slot], device=z0.device)
            row = torch.nn.functional.pad(row, (0, size - filled))[:, None]
            gram = gram.index_copy(1, index, row)
            gram = gram.index_copy(2, index, gram[:, slot, :, None])
            return relative_residual(z, fz, gap)
        gram[:, slot, :filled].copy_(row)
        gram[:, :filled, slot].copy_(row)
        # |G_slot| is on the new row already (its own product): no pass over G for the residual
        return relative_residual(z, fz, gap, row[:, slot].sqrt())

    f0 = g(z0)
    residual = record(0, z0, f0, 1)
    best, best_residual = z0.clone(), residual  # a buffer of its own (updated in place)
    done = residual <= tol
    stopped = done | torch.isinf(residual)  # converged, or f(z) not finite
    iterations = (~stopped).long()
    z = torch.where(stopped[:, None], z0, f0)
    mixed = torch.empty_like(z0)
    # CPU iterates without autograd: whole-batch masks are read on the host (no device to
    # synchronise with) to skip a full-size select when it would copy every row or none
    fast = z0.device.type == "cpu" and not torch.is_grad_enabled()
    residual = record(1, z, g(z), 2)
    slot, filled = 1, 2
    bordered = z0.new_zeros(batch, size + 1, size + 1)
    bordered[:, 0, 1:] = 1.0
    bordered[:, 1:, 0] = 1.0
    rhs = z0.new_zeros(batch, size + 1, 1)
    rhs[:, 0] = 1.0
    ridge = regularization * torch.eye(size, dtype=z0.dtype, device=z0.device)
    for k in range(1, settings.max_iter):
        improved = (residual < best_residual) & ~done
        if fast and bool(improved.all()):  # every sample improved: z becomes the best, no copy
            best, mixed = z, (best if z is mixed else mixed)
        else:
            best = _select(improved, z, best)
        best_residual = torch.where(improved, residual, best_residual)
        done = done | (best_residual <= tol)
        stopped = stopped | done | torch.isinf(residual)
        if settings.all_stopped(k, stopped) or k == settings.max_iter - 1:
            break
        iterations = iterations + (~stopped).long()
        window = gram[:, :filled, :filled]
        scale = window.diagonal(dim1=1, dim2=2).mean(-1, keepdim=True).add_(1e-30)[..., None]
        system = bordered[:, : filled + 1, : filled + 1]
        if torch.is_grad_enabled():
            system = system + torch.nn.functional.pad(
                window / scale + ridge[:filled, :filled], (1, 0, 1, 0)
            )
        else:  # the bordered system's inner block in place (its border is constant)
            torch.addcdiv(ridge[:filled, :filled], window, scale, out=system[:, 1:, 1:])
        alpha = torch.linalg.solve_ex(system, rhs[:, : filled + 1])[0][:, 1:, 0]  # (B, filled)
        # a sample whose residuals vanished exactly (e.g. float32 at its fixed point) gives a
        # singular system: fall back to the plain step from the last iterate
        finite = torch.isfinite(alpha).all(-1, keepdim=True)
        if not fast or not bool(finite.all()):
            last = torch.zeros_like(alpha)
            last[:, slot] = 1.0
            alpha = torch.where(finite, alpha, last)
        weights = alpha[:, None, :]
        history = images[:filled].transpose(0, 1)  # (B, filled, n)
        if torch.is_grad_enabled():
            z = (weights @ history)[:, 0]  # Σ α_k f(z_k)
        else:
            z = torch.bmm(weights, history, out=mixed[:, None])[:, 0]
        if damping != 1.0:  # d Σ α f + (1 − d) Σ α z = Σ α f − (1 − d) Σ α G
            z = z - (1.0 - damping) * (weights @ gaps[:filled].transpose(0, 1))[:, 0]
        if not fast or bool(stopped.any()):  # a stopped sample keeps its best iterate
            z = _select(stopped, best, z)
        slot = (slot + 1) % size
        filled = min(filled + 1, size)
        residual = record(slot, z, g(z), filled)
    improved = (residual < best_residual) & ~done
    best = _select(improved, z, best)
    best_residual = torch.where(improved, residual, best_residual)
    return SolverOutput(best, best_residual <= tol, iterations, best_residual)


@register_solver("picard_step")
def picard_step(
    g: Map, z0: Tensor, settings: SolverSettings, on_step: Callable[[Tensor], None] | None = None
) -> SolverOutput:
    """Iteration z ← (1 − d) z + d g(z) that stops a sample once its step |g(z) − z| ≤ ``tol``.

    Unlike :func:`picard`, the test is on the absolute step and the step that passes it is
    still taken (the returned z is the last g(z)), which is how retrieval in a modern Hopfield
    network is defined (Ramsauer et al., "Hopfield networks is all you need", 2020).
    ``on_step(z)`` is called with the (B, n) iterate after every iteration (e.g. to record an
    energy trace). A sample whose g(z) is not finite stops at its last finite iterate. The
    residual reported is the relative residual of each sample's last step.
    """
    damping, tol = settings.damping, settings.tol
    z = z0
    converged = torch.zeros(z0.shape[0], dtype=torch.bool, device=z0.device)
    stopped = converged
    iterations = torch.zeros(z0.shape[0], dtype=torch.long, device=z0.device)
    residual = torch.full((z0.shape[0],), torch.inf, dtype=z0.dtype, device=z0.device)
    for k in range(settings.max_iter):
        fz = g(z)
        finite = torch.isfinite(fz).all(dim=-1)
        active = ~stopped
        iterations = iterations + active.long()
        residual = torch.where(active, relative_residual(z, fz), residual)
        done = (fz - z).norm(dim=-1) <= tol
        step = (1.0 - damping) * z + damping * fz if damping != 1.0 else fz
        z = torch.where((active & finite)[:, None], step, z)
        converged = converged | (done & finite)
        stopped = stopped | converged | ~finite
        if on_step is not None:
            on_step(z)
        if (k + 1) % settings.check_every == 0 and bool(stopped.all()):  # on_step sees each
            break
    return SolverOutput(z, converged, iterations, residual)
