r"""Picard (damped) iteration, its step-length variant and Anderson acceleration on (B, n) iterates.

Both keep per-sample state: a sample whose residual is below ``tol`` keeps its solution and
stops counting iterations while the others go on, and so does a sample whose f(z) is no longer
finite (it keeps its last finite iterate and is reported as not converged); the whole batch is checked for completion
only every ``check_every`` iterations. Both are written without in-place updates of tensors
that autograd needs, so ``implicit=False`` can differentiate through them.

Anderson (type II, memory m; Walker & Ni 2011) extrapolates from the last m iterates:
α = argmin ‖Σ_k α_k G_k‖ subject to Σ_k α_k = 1 with G_k = f(z_k) − z_k, solved as a small
bordered linear system per sample (with Tikhonov regularisation λ), then
z ← d Σ α_k f(z_k) + (1 − d) Σ α_k z_k.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from spinformer.solvers._core import SolverOutput, register_solver, relative_residual

__all__ = ["anderson", "picard", "picard_step"]


def _finish(
    g: Callable[[Tensor], Tensor], best: Tensor, tol: float, iterations: Tensor
) -> SolverOutput:
    residual = relative_residual(best, g(best))
    return SolverOutput(best, residual <= tol, iterations, residual)


@register_solver("picard")
def picard(
    g: Callable[[Tensor], Tensor],
    z0: Tensor,
    *,
    tol: float,
    max_iter: int,
    damping: float,
    check_every: int,
) -> SolverOutput:
    """Damped fixed-point iteration z ← (1 − d) z + d g(z)."""
    z = z0
    done = torch.zeros(z0.shape[0], dtype=torch.bool, device=z0.device)
    iterations = torch.zeros(z0.shape[0], dtype=torch.long, device=z0.device)
    stopped = done  # converged, or diverged (f(z) not finite: z is the last finite iterate)
    for k in range(max_iter):
        fz = g(z)
        residual = relative_residual(z, fz)
        done = done | (residual <= tol)
        stopped = stopped | done | torch.isinf(residual)
        iterations = iterations + (~stopped).long()
        step = (1.0 - damping) * z + damping * fz if damping != 1.0 else fz
        z = torch.where(stopped[:, None], z, step)
        if (k + 1) % check_every == 0 and bool(stopped.all()):
            break
    return _finish(g, z, tol, iterations)


@register_solver("anderson")
def anderson(
    g: Callable[[Tensor], Tensor],
    z0: Tensor,
    *,
    tol: float,
    max_iter: int,
    damping: float,
    check_every: int,
    memory: int = 5,
    regularization: float = 1e-8,
) -> SolverOutput:
    """Anderson acceleration with ``memory`` past iterates (see the module docstring)."""
    batch = z0.shape[0]
    xs, fs = [z0], [g(z0)]
    residual = relative_residual(xs[0], fs[0])
    best, best_residual = xs[0], residual
    done = residual <= tol
    stopped = done | torch.isinf(residual)  # converged, or f(z) not finite
    iterations = (~stopped).long()
    xs.append(torch.where(stopped[:, None], xs[0], fs[0]))
    fs.append(g(xs[-1]))
    eye_cache: dict[int, Tensor] = {}
    for k in range(1, max_iter):
        residual = relative_residual(xs[-1], fs[-1])
        improved = residual < best_residual
        best = torch.where((improved & ~done)[:, None], xs[-1], best)
        best_residual = torch.where(improved & ~done, residual, best_residual)
        done = done | (best_residual <= tol)
        stopped = stopped | done | torch.isinf(residual)
        if (k % check_every == 0 and bool(stopped.all())) or k == max_iter - 1:
            break
        iterations = iterations + (~stopped).long()
        x_hist, f_hist = torch.stack(xs, 1), torch.stack(fs, 1)  # (B, m, n)
        m = x_hist.shape[1]
        gram_g = f_hist - x_hist
        gram = gram_g @ gram_g.transpose(1, 2)
        scale = gram.diagonal(dim1=1, dim2=2).mean(-1, keepdim=True)[..., None] + 1e-30
        if m not in eye_cache:
            eye_cache[m] = torch.eye(m, dtype=z0.dtype, device=z0.device)
        system = torch.zeros(batch, m + 1, m + 1, dtype=z0.dtype, device=z0.device)
        system = system + torch.nn.functional.pad(
            gram / scale + regularization * eye_cache[m], (1, 0, 1, 0)
        )
        border = torch.zeros(m + 1, m + 1, dtype=z0.dtype, device=z0.device)
        border[0, 1:] = 1.0
        border[1:, 0] = 1.0
        system = system + border
        rhs = torch.zeros(batch, m + 1, 1, dtype=z0.dtype, device=z0.device)
        rhs[:, 0] = 1.0
        alpha = torch.linalg.solve_ex(system, rhs)[0][:, 1:, 0]  # (B, m)
        # a sample whose residuals vanished exactly (e.g. float32 at its fixed point) gives a
        # singular system: fall back to the plain step from the last iterate
        last = torch.zeros_like(alpha)
        last[:, -1] = 1.0
        alpha = torch.where(torch.isfinite(alpha).all(-1, keepdim=True), alpha, last)
        mixed_f = (alpha[:, :, None] * f_hist).sum(1)
        mixed_x = (alpha[:, :, None] * x_hist).sum(1)
        new_x = damping * mixed_f + (1.0 - damping) * mixed_x if damping != 1.0 else mixed_f
        new_x = torch.where(stopped[:, None], best, new_x)
        xs.append(new_x)
        fs.append(g(new_x))
        if len(xs) > memory:
            xs.pop(0)
            fs.pop(0)
    residual = relative_residual(xs[-1], fs[-1])
    improved = (residual < best_residual) & ~done
    best = torch.where(improved[:, None], xs[-1], best)
    return _finish(g, best, tol, iterations)


@register_solver("picard_step")
def picard_step(
    g: Callable[[Tensor], Tensor],
    z0: Tensor,
    *,
    on_step: Callable[[Tensor], None] | None = None,
    tol: float,
    max_iter: int,
    damping: float,
    check_every: int,
) -> SolverOutput:
    """Iteration z ← (1 − d) z + d g(z) that stops a sample once its step |g(z) − z| ≤ ``tol``.

    Unlike :func:`picard`, the test is on the absolute step and the step that passes it is
    still taken (the returned z is the last g(z)), which is how retrieval in a modern Hopfield
    network is defined (Ramsauer et al., "Hopfield networks is all you need", 2020).
    ``on_step(z)`` is called with the (B, n) iterate after every iteration (e.g. to record an
    energy trace). A sample whose g(z) is not finite stops at its last finite iterate. The
    residual reported is the relative residual of each sample's last step.
    """
    z = z0
    converged = torch.zeros(z0.shape[0], dtype=torch.bool, device=z0.device)
    stopped = converged
    iterations = torch.zeros(z0.shape[0], dtype=torch.long, device=z0.device)
    residual = torch.full((z0.shape[0],), torch.inf, dtype=z0.dtype, device=z0.device)
    for k in range(max_iter):
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
        if (k + 1) % check_every == 0 and bool(stopped.all()):
            break
    return SolverOutput(z, converged, iterations, residual)
