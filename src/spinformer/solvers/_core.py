r"""Fixed points z* = f(z*) with per-sample diagnostics and implicit differentiation.

Every fixed point in the library -- mean-field self-consistency, modern Hopfield retrieval,
TAP equations, deep implicit layers -- is found here, so every caller gets the same
:class:`FixedPointResult` (solution, per-sample ``converged``, ``iterations``, ``residual``) and the
same backward.

Forward. The iteration runs without autograd. Samples (the leading ``batch_dims`` of ``z0``) are
independent: each has its own residual ``|f(z) − z| / (|f(z)| + ε)`` and stops counting
iterations once it is below ``tol``. Convergence of the whole batch is checked every
``check_every`` iterations only, so a GPU is not synchronised on every step; iterates on the CPU,
where the check is a plain read, are checked after every iteration (the per-sample results are
the same, the solver just stops as soon as the last sample has).

Backward (``implicit=True``). By the implicit function theorem, with J = ∂f/∂z at z*, the
gradient of a loss L through z* = f(z*, θ) is ∂L/∂θ = (∂f/∂θ)ᵀ y with y solving the *adjoint*
fixed point y = (∂L/∂z*) + Jᵀ y (Bai, Kolter & Koltun, "Deep Equilibrium Models", 2019). The
solution is returned as one differentiable application z = f(z*) whose gradient hook solves the
adjoint equation with the same solver. Memory is that of one application of f, whatever the
number of forward iterations. A caller that knows (∂f/∂z)ᵀ in closed form passes it as ``vjp``,
and the adjoint iterations apply it instead of autograd through a second application of f.
``implicit=False`` instead differentiates through every iteration
(memory grows linearly), which is the reference the implicit route is tested against.

Non-convergence is never silent: the flags are in the result and a :class:`SolverWarning` is
emitted (``warn=False`` to silence it when the caller reports it otherwise). A sample whose
iterate or residual is NaN or infinite (divergence, overflow) is never converged, has residual
``inf`` and is counted as diverged in the warning. An empty batch returns ``z0`` itself with
empty diagnostics, without calling ``f``.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from spinformer._validation import check_finite

__all__ = [
    "FixedPointResult",
    "SolverOutput",
    "SolverSettings",
    "SolverWarning",
    "available_solvers",
    "fixed_point",
    "register_solver",
    "relative_residual",
]

_EPS = 1e-12


class SolverWarning(UserWarning):
    """Some samples did not reach the requested tolerance."""


@dataclass(frozen=True)
class FixedPointResult:
    """A fixed point with its evidence.

    Attributes:
        solution: z* with the shape of ``z0``, differentiable w.r.t. what ``f`` closes over.
        converged: bool, shape ``batch`` (the leading ``batch_dims`` of ``z0``).
        iterations: iterations each sample used (long, shape ``batch``).
        residual: final relative residual |f(z) − z| / (|f(z)| + ε) per sample.
    """

    solution: Tensor
    converged: Tensor
    iterations: Tensor
    residual: Tensor

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())


@dataclass(frozen=True)
class SolverOutput:
    """What a registered solver returns on flattened (B, n) iterates."""

    solution: Tensor
    converged: Tensor
    iterations: Tensor
    residual: Tensor


@dataclass(frozen=True)
class SolverSettings:
    """The settings every registered solver takes (see :func:`fixed_point`)."""

    tol: float
    max_iter: int
    damping: float
    check_every: int

    def all_stopped(self, iteration: int, stopped: Tensor) -> bool:
        """Whether every sample has stopped, read at check points only: every ``check_every``
        iterations, or every iteration for CPU tensors (no device to synchronise with)."""
        if stopped.device.type != "cpu" and iteration % self.check_every:
            return False
        return bool(stopped.all())


Solver = Callable[..., SolverOutput]
"""``solver(g, z0, settings, **options)``; see :func:`register_solver`."""


_SOLVERS: dict[str, Solver] = {}


def register_solver(name: str) -> Callable[[Solver], Solver]:
    """Register ``solver(g, z0, settings, **options)`` as ``name``.

    ``g`` maps flattened iterates (B, n) to (B, n), ``settings`` is a :class:`SolverSettings`;
    the solver returns a :class:`SolverOutput`.
    """

    def decorate(solver: Solver) -> Solver:
        _SOLVERS[name] = solver
        return solver

    return decorate


def available_solvers() -> tuple[str, ...]:
    return tuple(sorted(_SOLVERS))


def relative_residual(
    z: Tensor, fz: Tensor, difference: Tensor | None = None, distance: Tensor | None = None
) -> Tensor:
    """|f(z) − z| / (|f(z)| + ε) per row of (B, n) tensors; ``inf`` for a row that is not finite.

    Both vectors are divided by their largest |entry| s before the norms are taken (the ratio is
    unchanged, with ε/s in place of ε), so the squares inside the norms cannot overflow: in
    float32 ‖f(z)‖ of four entries of 10¹⁹⁺ is already ``inf``, which made |f(z) − z|/‖f(z)‖ = 0
    and a diverging iteration look converged. A NaN or infinite entry gives ``inf``: such a
    sample is never converged. On the CPU the plain norms are taken first and kept when every
    row's are finite and ‖f(z)‖ is far from underflow (the same ratio, two passes instead of
    nine); ``difference`` is f(z) − z when the caller has it, ``distance`` its norm per row.
    """
    if z.shape[-1] == 0:
        return z.new_zeros(z.shape[:-1])
    if z.device.type == "cpu" and not z.requires_grad and not fz.requires_grad:
        if distance is None:
            distance = torch.linalg.vector_norm(
                fz - z if difference is None else difference, dim=-1
            )
        numerator, denominator = distance, torch.linalg.vector_norm(fz, dim=-1)
        # both finite (a sum of norms is below inf only then; one that overflows takes the
        # scaled route, which gives the same ratio), and squares far above underflow
        plain = (numerator + denominator < math.inf) & (denominator >= _floor(z.dtype))
        if bool(plain.all()):
            return numerator / (denominator + _EPS)
    scale = torch.maximum(z.detach().abs().amax(dim=-1), fz.detach().abs().amax(dim=-1))
    finite = torch.isfinite(scale)
    safe = torch.where(finite & (scale > 0), scale, torch.ones_like(scale))
    fz_scaled = fz / safe[..., None]
    residual = (fz_scaled - z / safe[..., None]).norm(dim=-1) / (
        fz_scaled.norm(dim=-1) + _EPS / safe
    )
    return torch.where(finite, residual, torch.full_like(residual, math.inf))


@functools.cache
def _floor(dtype: torch.dtype) -> float:
    """The smallest ‖f(z)‖ whose square is far above the underflow threshold of ``dtype``."""
    return torch.finfo(dtype).tiny ** 0.25


def _validate(
    z0: Tensor, tol: float, max_iter: int, damping: float, batch_dims: int, check_every: int
) -> None:
    if not isinstance(z0, Tensor) or not z0.is_floating_point():
        raise ValueError(f"z0 must be a floating-point tensor, got {type(z0).__name__}")
    if not (0 <= batch_dims < z0.ndim or (batch_dims == 0 and z0.ndim == 0)):
        raise ValueError(f"batch_dims must be in [0, z0.ndim) = [0, {z0.ndim}), got {batch_dims}")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not 0 < damping <= 1:
        raise ValueError(f"damping must be in (0, 1], got {damping!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every must be a positive integer, got {check_every!r}")
    check_finite(z0, "z0")


def fixed_point(
    f: Callable[[Tensor], Tensor],
    z0: Tensor,
    method: str = "anderson",
    tol: float = 1e-6,
    max_iter: int = 200,
    damping: float = 1.0,
    batch_dims: int = 1,
    implicit: bool = True,
    check_every: int = 4,
    warn: bool = True,
    backward_tol: float | None = None,
    backward_max_iter: int | None = None,
    vjp: Callable[[Tensor], Callable[[Tensor], Tensor]] | None = None,
    **options: Any,
) -> FixedPointResult:
    """Solve z = f(z) from ``z0`` with solver ``method``; see the module docstring.

    Args:
        f: map from z to f(z), same shape; samples must not interact.
        z0: initial guess, shape (*batch, *event) with ``batch_dims`` batch dims.
        method: a registered solver (``available_solvers()``).
        tol: tolerance on the per-sample relative residual.
        max_iter: iteration budget.
        damping: Picard mixing z ← (1 − d) z + d f(z); Anderson's mixing parameter.
        batch_dims: number of leading dims of ``z0`` that index independent samples.
        implicit: implicit-function backward (True) or unrolled autograd (False).
        check_every: iterations between whole-batch convergence checks (host syncs) of
            iterates on an accelerator; CPU iterates are checked after every iteration.
        warn: emit :class:`SolverWarning` when a sample does not converge.
        backward_tol, backward_max_iter: adjoint solve settings (default: the forward ones).
        vjp: optional closed form of the adjoint's products: ``vjp(z)`` returns the map
            y ↦ (∂f/∂z)ᵀ y at z (same shape as z), used by the implicit backward at z* in
            place of autograd through a second application of f (which it must equal). It is
            called with the very tensor z* (detached) that f was applied to for the solution,
            so f may hand it what that application computed.
        options: solver-specific options (e.g. ``memory`` for Anderson).
    """
    if method not in _SOLVERS:
        raise ValueError(f"method must be one of {available_solvers()}, got {method!r}")
    _validate(z0, tol, max_iter, damping, batch_dims, check_every)
    solver = _SOLVERS[method]
    shape = z0.shape
    batch_shape = shape[:batch_dims]
    flat_batch = math.prod(batch_shape)
    event = math.prod(shape[batch_dims:])  # explicit: reshape(..., -1) fails on 0 elements
    if flat_batch == 0:  # no samples: nothing to iterate, an empty result of the right shapes
        empty = torch.zeros(batch_shape, dtype=torch.long, device=z0.device)
        return FixedPointResult(z0, empty.bool(), empty, empty.to(z0.dtype))

    def flat(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        def apply(z: Tensor) -> Tensor:
            fz = fn(z.reshape(shape))
            if not isinstance(fz, Tensor) or fz.shape != shape:
                got = tuple(fz.shape) if isinstance(fz, Tensor) else type(fz).__name__
                raise ValueError(f"f must return a tensor of z0's shape {tuple(shape)}, got {got}")
            return fz.reshape(flat_batch, event)

        return apply

    settings = SolverSettings(tol, max_iter, damping, check_every)
    if not implicit:
        with torch.enable_grad():
            out = solver(flat(f), z0.reshape(flat_batch, event), settings, **options)
        solution = out.solution.reshape(shape)
    else:
        with torch.no_grad():
            out = solver(flat(f), z0.detach().reshape(flat_batch, event), settings, **options)
        z_star = out.solution.reshape(shape).detach()
        solution = z_star
        if torch.is_grad_enabled():
            solution = f(z_star)
            if solution.requires_grad:
                backward = replace(
                    settings,
                    tol=tol if backward_tol is None else backward_tol,
                    max_iter=max_iter if backward_max_iter is None else backward_max_iter,
                )
                adjoint = functools.partial(solver, settings=backward, **options)
                _attach_adjoint(f, z_star, solution, adjoint, (flat_batch, event), warn, vjp)
    finite, converged = _verdict(
        out, warn, f"fixed_point({method})", f" (tol={tol:g}, max_iter={max_iter})"
    )
    residual = torch.where(finite, out.residual, torch.full_like(out.residual, math.inf))
    converged = converged.reshape(batch_shape)
    return FixedPointResult(
        solution, converged, out.iterations.reshape(batch_shape), residual.reshape(batch_shape)
    )


def _verdict(out: SolverOutput, warn: bool, what: str, suffix: str = "") -> tuple[Tensor, Tensor]:
    """(finite, converged) per flattened sample; warns ``what: failures suffix`` when one failed.

    A sample is finite when its residual and its whole solution are; converged also needs the
    solver's own verdict.
    """
    residual, solution = out.residual.detach(), out.solution.detach()
    rows = torch.isfinite(solution.sum(-1))  # a sum propagates NaN/inf; exact check if not finite
    if solution.device.type != "cpu" or not bool(rows.all()):
        rows = torch.isfinite(solution).all(dim=-1)
    finite = torch.isfinite(residual) & rows
    converged = out.converged & finite
    if warn and not bool(converged.all()):
        warnings.warn(
            f"{what}: {_failures(converged, finite, residual)}{suffix}",
            SolverWarning,
            stacklevel=3,
        )
    return finite, converged


def _failures(converged: Tensor, finite: Tensor, residual: Tensor) -> str:
    """What went wrong, for the warning: diverged (non-finite) and unconverged sample counts."""
    diverged = int((~finite).sum())
    failed = int((~converged).sum()) - diverged
    parts = []
    if diverged:
        parts.append(
            f"{diverged} of {converged.numel()} samples diverged (a non-finite iterate or"
            " residual: NaN or overflow)"
        )
    if failed:
        worst = float(residual.detach().reshape(finite.shape)[finite].max())
        parts.append(
            f"{failed} of {converged.numel()} samples did not converge (max residual {worst:.3g})"
        )
    return "; ".join(parts)


def _attach_adjoint(
    f: Callable[[Tensor], Tensor],
    z_star: Tensor,
    output: Tensor,
    solver: Callable[[Callable[[Tensor], Tensor], Tensor], SolverOutput],
    flat_shape: tuple[int, int],
    warn: bool,
    vjp: Callable[[Tensor], Callable[[Tensor], Tensor]] | None = None,
) -> None:
    """Replace the gradient arriving at ``output`` = f(z*) by the adjoint fixed point y = g + Jᵀy
    (Jᵀy by ``vjp(z*)`` when given, else by autograd through f at z*)."""
    shape = z_star.shape

    def hook(grad: Tensor | None) -> Tensor | None:
        if grad is None:  # an undefined gradient stays undefined
            return None
        if vjp is not None:
            with torch.no_grad():
                product = vjp(z_star)  # the z* that f was applied to for the output
                # contiguous once (e.g. the gradient of a transposed view): every adjoint step
                # adds it, and a sum with a strided operand runs several times slower
                rhs = grad.contiguous()
                out = solver(
                    lambda y: (product(y.reshape(shape)) + rhs).reshape(flat_shape),
                    rhs.reshape(flat_shape),
                )
            _verdict(out, warn, "fixed_point backward: the adjoint solve failed")
            return out.solution.reshape(shape)
        with torch.enable_grad():
            z_leaf = z_star.detach().requires_grad_(True)
            f_leaf = f(z_leaf)

            def adjoint(y: Tensor) -> Tensor:
                (vjp,) = torch.autograd.grad(f_leaf, z_leaf, y.reshape(shape), retain_graph=True)
                return (vjp + grad).reshape(flat_shape)

            with torch.no_grad():
                out = solver(adjoint, grad.reshape(flat_shape))
        _verdict(out, warn, "fixed_point backward: the adjoint solve failed")
        return out.solution.reshape(shape)

    output.register_hook(hook)
