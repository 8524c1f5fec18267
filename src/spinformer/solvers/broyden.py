r"""Limited-memory ("good") Broyden root finding for fixed points, per sample.

A fixed point of f is a root of G(z) = f(z) − z. Broyden's method keeps an approximation
H ≈ (∂G/∂z)⁻¹, starting from H₀ = −I (so the first step is a Picard step), steps
Δz = −d·H G(z) (d the ``damping``), and after each step applies the rank-one secant update
that makes H map the observed ΔG to Δz (Broyden 1965; Sherman–Morrison form):

.. math::

    H \leftarrow H + \frac{(\Delta z - H\Delta G)\,(\Delta z^{\mathsf T} H)}
                          {\Delta z^{\mathsf T} H \Delta G} .

H is never formed: it is stored as −I + Σ_k u_k v_kᵀ with at most ``memory`` pairs per sample
(the oldest pair is dropped when full), so one step costs O(memory · n) per sample -- the
representation used by deep equilibrium models (Bai, Kolter & Koltun 2019). Every sample has its
own H, residual and stopping; a converged sample keeps its iterate, and a sample whose f(z) is no
longer finite stops there (reported as not converged). The best iterate seen is returned with
its residual. Written without in-place updates, so ``implicit=False`` can differentiate through it.
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

__all__ = ["broyden"]


def _apply(us: list[Tensor], vs: list[Tensor], x: Tensor) -> Tensor:
    """H x = −x + Σ u_k (v_k · x) for (B, n) x."""
    out = -x
    for u, v in zip(us, vs, strict=True):
        out = out + u * (v * x).sum(-1, keepdim=True)
    return out


def _apply_transposed(us: list[Tensor], vs: list[Tensor], x: Tensor) -> Tensor:
    """Hᵀ x = −x + Σ v_k (u_k · x)."""
    out = -x
    for u, v in zip(us, vs, strict=True):
        out = out + v * (u * x).sum(-1, keepdim=True)
    return out


@register_solver("broyden")
def broyden(
    g: Callable[[Tensor], Tensor], z0: Tensor, settings: SolverSettings, memory: int = 20
) -> SolverOutput:
    """Good Broyden with ``memory`` rank-one pairs per sample (see the module docstring)."""
    if isinstance(memory, bool) or not isinstance(memory, int) or memory < 1:
        raise ValueError(f"memory must be a positive integer, got {memory!r}")
    tol, damping = settings.tol, settings.damping
    z = z0
    fz = g(z)
    residual_vec = fz - z
    residual = relative_residual(z, fz, residual_vec)
    best, best_residual = z, residual
    done = residual <= tol
    stopped = done | torch.isinf(residual)  # converged, or f(z) not finite
    iterations = torch.zeros(z0.shape[0], dtype=torch.long, device=z0.device)
    us: list[Tensor] = []
    vs: list[Tensor] = []
    tiny = torch.finfo(z0.dtype).tiny
    for k in range(settings.max_iter):
        if settings.all_stopped(k, stopped):
            break
        iterations = iterations + (~stopped).long()
        step = -damping * _apply(us, vs, residual_vec)
        step = torch.where(stopped[:, None], torch.zeros_like(step), step)
        z_new = z + step
        f_new = g(z_new)
        residual_new = f_new - z_new
        delta_g = residual_new - residual_vec
        h_delta_g = _apply(us, vs, delta_g)
        denominator = (step * h_delta_g).sum(-1, keepdim=True)
        usable = denominator.abs() > tiny
        safe = torch.where(usable, denominator, torch.ones_like(denominator))
        u = torch.where(usable, (step - h_delta_g) / safe, torch.zeros_like(step))
        v = _apply_transposed(us, vs, step)
        us.append(u)
        vs.append(v)
        if len(us) > memory:
            us.pop(0)
            vs.pop(0)
        z, fz, residual_vec = z_new, f_new, residual_new
        residual = relative_residual(z, fz, residual_vec)
        improved = (residual < best_residual) & ~done
        best = torch.where(improved[:, None], z, best)
        best_residual = torch.where(improved, residual, best_residual)
        done = done | (best_residual <= tol)
        stopped = stopped | done | torch.isinf(residual)
    return SolverOutput(best, best_residual <= tol, iterations, best_residual)
