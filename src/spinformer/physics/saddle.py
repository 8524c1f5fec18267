r"""Steepest-descent (saddle-point) free energy of spherical vector spins with symmetric couplings.

Following Bal, "Approximate free energy minimization" (2021), each spherical constraint
|σ_i|² = R² is written as a Fourier integral over a multiplier t_i; the spins are then Gaussian and
integrate out exactly, leaving

.. math::

    \ln Z \approx \min_{t}\ \Phi(t),\qquad
    \Phi(t) = R^2\sum_i t_i - \frac D2 \ln\det V + \frac{\beta^2}{2}\sum_{a=1}^{D} h_a^{\mathsf T} V^{-1} h_a
              - N c_D,\qquad V = 2\,\mathrm{diag}(t) - \beta J,

with h_a the a-th field component over sites and c_D = D/2 − (D/2) ln(D/R²) the constant that
makes ln Z = 0 at J = 0, h = 0 (uniform probability measure on each sphere, as ``method="exact"``).
Φ is convex on {V ≻ 0} (−ln det and the matrix-fractional term are convex), so the saddle is
its minimum. The stationarity condition R² = D (V⁻¹)_ii + |m_i|² says that each spin is on its
sphere on average: thermal spread plus mean, with m = βV⁻¹h (the envelope theorem; here
m = β⁻¹ ∂ln Z/∂h is computed by autodiff and checked against this closed form).

Solver. The map t ↦ t − Δ/(1 + λ) with Newton step Δ = H⁻¹∇Φ and decrement
λ = √(∇Φᵀ Δ / (D/2)) (Φ is D/2 times a self-concordant barrier plus convex terms; the full
step t − Δ once λ < 1/4, where Newton converges quadratically) is iterated to its
fixed point by :mod:`spinformer.solvers` ("picard": mixing could leave the domain). Every step
has norm < 1 in the metric of the barrier −ln det V, so it stays in its Dikin ellipsoid and V
stays positive definite. Gradient and Hessian are closed forms, with G = V⁻¹ and m = βGh:

.. math::

    \partial_{t_i}\Phi = R^2 - D\,G_{ii} - |m_i|^2,\qquad
    \partial_{t_i}\partial_{t_j}\Phi = 2D\,G_{ij}^2 + 4\,G_{ij}\, m_i\cdot m_j .

ln Z is made differentiable to second order with one undamped Newton step from the detached
solution (:mod:`spinformer.physics._variational`). At J = 0 the saddle gives
m = (2R²/D) βh / (1 + √(1 + 4R²β²|h|²/D²)), a large-D form of the Bessel response (error ∝ 1/D).

Response. :func:`saddle_response` (the attention module's route) reads m = βG(t*)h and
ln Z = Φ(t*) off the solver's last factors and differentiates them in closed form. For an
upstream gradient ḡ of m: s_i = −2 (Gḡ)_i·m_i is ∂L/∂t_i at fixed (J, h, β); the implicit
function theorem, dt* = −H⁻¹ ∂_p∇Φ dp (Gould et al., "On differentiating parameterized argmin
and argmax problems with application to bi-level optimization", 2016), turns it into one solve
u = H⁻¹s with the Hessian's Cholesky factor; with q = G(ḡ + 2 diag(u) m),

.. math::

    \frac{\partial L}{\partial h} = \beta q,\qquad
    \frac{\partial L}{\partial J} = \beta\big[\tfrac12(q m^{\mathsf T} + m q^{\mathsf T})
        + D\, G\,\mathrm{diag}(u)\, G\big],\qquad
    \beta\frac{\partial L}{\partial \beta} = \Big\langle J, \frac{\partial L}{\partial J}\Big\rangle
        + \Big\langle h, \frac{\partial L}{\partial h}\Big\rangle,

the last because Φ depends on (βJ, βh) only. ln Z's derivatives are the envelope theorem's
(t* fixed): ∂ln Z/∂h = βm, ∂ln Z/∂J = β(D G + m mᵀ)/2.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import torch
from torch import Tensor

from spinformer._validation import check_positive_int, check_symmetric
from spinformer.physics.models import VectorSpinModel
from spinformer.physics.thermo import (
    Thermodynamics,
    register_method,
    thermodynamics_from_log_partition,
)
from spinformer.solvers import FixedPointResult, fixed_point

__all__ = [
    "saddle_gradient_hessian",
    "saddle_log_partition",
    "saddle_magnetization",
    "saddle_potential",
    "saddle_response",
    "saddle_thermodynamics",
    "solve_saddle",
]


def _precision(couplings: Tensor, multipliers: Tensor, beta: Tensor) -> Tensor:
    """V = 2 diag(t) − βJ, built as −βJ with 2t added to its diagonal in place (one pass)."""
    precision = couplings * -beta[..., None, None]
    shape = torch.broadcast_shapes(precision.shape, multipliers.shape + multipliers.shape[-1:])
    if precision.shape != shape:
        precision = precision.expand(shape).clone()
    precision.diagonal(dim1=-2, dim2=-1).add_(2.0 * multipliers)
    return precision


def _addmm(base: Tensor, left: Tensor, right: Tensor, beta: float, alpha: float) -> Tensor:
    """beta·base + alpha·left @ right in one pass, for any number of (equal) batch dims."""
    if base.ndim == 2:
        return torch.addmm(base, left, right, beta=beta, alpha=alpha)
    (n, k), cols = left.shape[-2:], right.shape[-1]
    count = math.prod(base.shape[:-2])  # explicit: reshape(-1, ...) fails on 0 elements
    out = torch.baddbmm(
        base.reshape(count, n, cols),
        left.reshape(count, n, k),
        right.reshape(count, k, cols),
        beta=beta,
        alpha=alpha,
    )
    return out.reshape(base.shape)


def saddle_potential(
    multipliers: Tensor, couplings: Tensor, field: Tensor, beta: Tensor, radius: float
) -> Tensor:
    """Φ(t) of the module docstring; multipliers (..., N), couplings (..., N, N), field (..., N, D)."""
    n, dim = field.shape[-2], field.shape[-1]
    precision = _precision(couplings, multipliers, beta)
    chol = torch.linalg.cholesky(precision)
    logdet = 2.0 * torch.log(chol.diagonal(dim1=-2, dim2=-1)).sum(-1)
    solved = torch.cholesky_solve(field, chol)
    quad = (field * solved).sum((-1, -2))
    const = dim / 2.0 - dim / 2.0 * math.log(dim / radius**2)
    return radius**2 * multipliers.sum(-1) - 0.5 * dim * logdet + 0.5 * beta**2 * quad - n * const


class _ClosedForms(NamedTuple):
    """Everything one Newton step computes at the multipliers t, kept for reuse at the saddle."""

    multipliers: Tensor
    grad: Tensor  # ∇Φ (..., N)
    hess: Tensor  # ∇²Φ (..., N, N)
    mag: Tensor  # m = βGh (..., N, D)
    green: Tensor  # G = V⁻¹ (..., N, N)
    logdet: Tensor  # ln det V (...)
    hess_chol: Tensor  # Cholesky factor of ∇²Φ (where it exists)
    hess_ok: Tensor  # bool (...): the factor exists (else the general solve is used)


def _green_forms(
    multipliers: Tensor, couplings: Tensor, field: Tensor, beta: Tensor, radius: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(Cholesky factor of V, G, m, ∇Φ, ∇²Φ) at the multipliers t."""
    dim = field.shape[-1]
    chol, _ = torch.linalg.cholesky_ex(_precision(couplings, multipliers, beta))
    green = torch.cholesky_inverse(chol)
    mag = beta[..., None, None] * green @ field
    grad = radius**2 - dim * green.diagonal(dim1=-2, dim2=-1) - (mag * mag).sum(-1)
    hess = green * _addmm(green, mag, mag.transpose(-1, -2), beta=2.0 * dim, alpha=4.0)
    return chol, green, mag, grad, hess


def saddle_gradient_hessian(
    multipliers: Tensor, couplings: Tensor, field: Tensor, beta: Tensor, radius: float
) -> tuple[Tensor, Tensor, Tensor]:
    """(∇Φ, ∇²Φ, m) in closed form at the multipliers t (see the module docstring)."""
    _, _, mag, grad, hess = _green_forms(multipliers, couplings, field, beta, radius)
    return grad, hess, mag


#: (process id, workers, pool): a forked child, or a call that needs more workers, makes its own
_POOL: tuple[int, int, ThreadPoolExecutor] | None = None


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL[0] != os.getpid() or _POOL[1] < workers:
        if _POOL is not None and _POOL[0] == os.getpid():
            _POOL[2].shutdown(wait=False)  # its idle threads exit
        pool = ThreadPoolExecutor(workers, thread_name_prefix="spinformer-saddle")
        _POOL = (os.getpid(), workers, pool)
    return _POOL[2]


@functools.cache
def _openmp() -> bool:
    """Whether ATen's CPU parallelism is OpenMP's, whose thread count may be changed at any time
    (the native backend warns on a change after the first parallel work)."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def _over_batch(
    fn: Callable[..., tuple[Tensor, ...]], batch_shape: torch.Size, *tensors: Tensor
) -> list[tuple[Tensor, ...]]:
    """``fn(*tensors)`` for tensors and results whose leading dims are ``batch_shape`` (no
    autograd), as a list of results over consecutive chunks of the flattened batch (put
    together by :func:`_join`). On the CPU with several intra-op threads, there is one chunk per
    thread, each run single-threaded in a worker thread: a batched LAPACK call is a loop over the
    small matrices, each factorised by all threads with a synchronisation per panel, which
    scales poorly at N ~ 10², and very badly when other processes hold the cores; independent
    matrices need no synchronisation at all. Otherwise one chunk, the whole batch as it is."""
    threads, count = torch.get_num_threads(), math.prod(batch_shape)
    if threads < 2 or count < 2 or tensors[0].device.type != "cpu" or not _openmp():
        return [fn(*tensors)]
    workers, dims = min(threads, count), len(batch_shape)
    flat = [t.reshape(count, *t.shape[dims:]) for t in tensors]
    chunks = list(zip(*(t.tensor_split(workers) for t in flat), strict=True))

    def work(chunk: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        torch.set_num_threads(1)  # this worker's OpenMP teams
        with torch.no_grad():
            return fn(*chunk)

    torch.set_num_threads(1)  # MKL's thread count is process-wide: one per chunk while they run
    try:
        return list(_pool(workers).map(work, chunks))
    finally:
        torch.set_num_threads(threads)


def _join(results: list[tuple[Tensor, ...]], index: int, batch_shape: torch.Size) -> Tensor:
    """Result ``index`` of :func:`_over_batch` over the whole batch (a copy only if chunked)."""
    if len(results) == 1:
        return results[0][index]
    parts = [result[index] for result in results]
    return torch.cat(parts).reshape(*batch_shape, *parts[0].shape[1:])


def _newton_forms(
    multipliers: Tensor, couplings: Tensor, field: Tensor, beta: Tensor, radius: float
) -> tuple[list[tuple[Tensor, ...]], Tensor, Tensor]:
    """The closed forms at t, chunked (:func:`_closed_forms` joins them), with ∇Φ and the
    Newton direction Δ = H⁻¹∇Φ over the whole batch."""

    def forms(t: Tensor, j: Tensor, h: Tensor, b: Tensor) -> tuple[Tensor, ...]:
        chol, green, mag, grad, hess = _green_forms(t, j, h, b, radius)
        logdet = 2.0 * torch.log(chol.diagonal(dim1=-2, dim2=-1)).sum(-1)
        hess_chol, info = torch.linalg.cholesky_ex(hess)
        delta = _solve_hessian(hess, hess_chol, info == 0, grad)
        return grad, hess, mag, green, logdet, hess_chol, info == 0, delta

    chunks = _over_batch(forms, beta.shape, multipliers, couplings, field, beta)
    return chunks, _join(chunks, 0, beta.shape), _join(chunks, 7, beta.shape)


def _closed_forms(
    multipliers: Tensor, chunks: list[tuple[Tensor, ...]], batch_shape: torch.Size
) -> _ClosedForms:
    """The :class:`_ClosedForms` at t from the chunks of :func:`_newton_forms`."""
    return _ClosedForms(multipliers, *(_join(chunks, i, batch_shape) for i in range(7)))


def _solve_hessian(hess: Tensor, chol: Tensor, ok: Tensor, rhs: Tensor) -> Tensor:
    """H⁻¹ rhs, rhs (..., N), by the Cholesky factor ``chol`` of H = ∇²Φ (positive definite:
    Schur products of the positive definite G with G and with m·mᵀ); half the work of an LU
    solve, and multi-threaded batched LU fails for N ≥ 256 in some MKL builds. Where a factor
    failed (``ok`` false: H not numerically positive definite), the general solve."""
    if not bool(ok.all()):
        return torch.linalg.solve(hess, rhs[..., None])[..., 0]
    return torch.cholesky_solve(rhs[..., None], chol)[..., 0]


def _newton_step(hess: Tensor, grad: Tensor) -> Tensor:
    """H⁻¹∇Φ (see :func:`_solve_hessian`)."""
    chol, info = torch.linalg.cholesky_ex(hess)
    return _solve_hessian(hess, chol, info == 0, grad)


def _initial_multipliers(couplings: Tensor, field: Tensor, beta: Tensor, radius: float) -> Tensor:
    """Free-spin saddle, raised where needed so that V = 2 diag(t) − βJ is strictly diagonally
    dominant (hence positive definite, Gershgorin)."""
    dim = field.shape[-1]
    b = beta[..., None]
    free = (
        dim
        / (4.0 * radius**2)
        * (1.0 + torch.sqrt(1.0 + 4.0 * radius**2 * b**2 * (field * field).sum(-1) / dim**2))
    )
    return torch.maximum(free, 0.505 * b * couplings.abs().sum(-1))


class _DampedNewton:
    """The damped Newton map t ↦ t − Δ/(1 + λ) of the module docstring.

    It keeps the closed forms of its last evaluation (:meth:`at`): the solver's final residual
    check evaluates the map again at the point of its last iteration, which then costs nothing,
    and the factors at the saddle (G, the Hessian's Cholesky factor) serve the magnetization and
    its backward (:func:`saddle_response`).
    """

    def __init__(self, couplings: Tensor, field: Tensor, beta: Tensor, radius: float) -> None:
        self.couplings, self.field, self.beta, self.radius = couplings, field, beta, radius
        self._last: tuple[Tensor, list[tuple[Tensor, ...]], Tensor] | None = None  # t, forms, step

    def __call__(self, multipliers: Tensor) -> Tensor:
        if self._last is not None and torch.equal(multipliers, self._last[0]):
            return self._last[2]
        multipliers = multipliers.clone()  # the key of the cache, safe from in-place updates
        chunks, grad, delta = _newton_forms(
            multipliers, self.couplings, self.field, self.beta, self.radius
        )
        # Φ = (D/2)·(self-concordant barrier) + convex terms: the decrement in the barrier's own
        # scale is λ/√(D/2); damped far away, pure Newton once it is < 1/4.
        dim = self.field.shape[-1]
        decrement = torch.sqrt((grad * delta).sum(-1, keepdim=True).clamp_min(0.0) / (dim / 2.0))
        scale = torch.where(decrement > 0.25, 1.0 / (1.0 + decrement), torch.ones_like(decrement))
        self._last = (multipliers, chunks, multipliers - scale * delta)
        return self._last[2]

    def at(self, multipliers: Tensor) -> tuple[_ClosedForms, Tensor]:
        """The closed forms and the Newton direction Δ at ``multipliers``: the last
        evaluation's when it was there."""
        if self._last is None or not torch.equal(multipliers, self._last[0]):
            self(multipliers)
        key, chunks, _ = self._last  # type: ignore[misc]
        shape = self.beta.shape
        return _closed_forms(key, chunks, shape), _join(chunks, 7, shape)

    def refined(self, multipliers: Tensor) -> _ClosedForms:
        """The closed forms at the solution, with m, ln det V and t taken one undamped Newton
        step further, at t₁ = t* − Δ, as :func:`saddle_log_partition` does: m and ln Z then
        differ from the exact saddle's by the square of the solver's last step, not by the
        step. G and the Hessian stay those at t* (the backward's). A system whose V(t₁) is not
        positive definite (an unconverged solve) keeps t*."""
        forms, delta = self.at(multipliers)
        step = forms.multipliers - delta

        def at_step(t: Tensor, j: Tensor, h: Tensor, b: Tensor) -> tuple[Tensor, ...]:
            chol, info = torch.linalg.cholesky_ex(_precision(j, t, b))
            mag = b[..., None, None] * torch.cholesky_solve(h, chol)
            return mag, 2.0 * torch.log(chol.diagonal(dim1=-2, dim2=-1)).sum(-1), info == 0

        shape = self.beta.shape
        chunks = _over_batch(at_step, shape, step, self.couplings, self.field, self.beta)
        mag, logdet, ok = (_join(chunks, i, shape) for i in range(3))
        return forms._replace(
            multipliers=torch.where(ok[..., None], step, forms.multipliers),
            mag=torch.where(ok[..., None, None], mag, forms.mag),
            logdet=torch.where(ok, logdet, forms.logdet),
        )


def _solve(
    couplings: Tensor,
    field: Tensor,
    beta: Tensor,
    radius: float,
    tol: float,
    max_iter: int,
    warn: bool,
) -> tuple[FixedPointResult, _DampedNewton]:
    """:func:`solve_saddle`, with the Newton map that holds the closed forms of its last step."""
    check_positive_int(max_iter, "max_iter")
    check_symmetric(couplings.detach(), "couplings")
    with torch.no_grad():
        couplings, field, beta = couplings.detach(), field.detach(), beta.detach()
        newton = _DampedNewton(couplings, field, beta, radius)
        result = fixed_point(
            newton,
            _initial_multipliers(couplings, field, beta, radius),
            method="picard",
            tol=tol,
            max_iter=max_iter,
            batch_dims=beta.ndim,
            check_every=2,
            warn=warn,
        )
    return result, newton


def solve_saddle(
    couplings: Tensor,
    field: Tensor,
    beta: Tensor,
    radius: float,
    tol: float = 1e-10,
    max_iter: int = 100,
    warn: bool = True,
) -> FixedPointResult:
    """Multipliers t* minimising Φ (no autograd); batch = the leading dims of ``beta``.

    ``couplings``, ``field`` and ``beta`` must already be broadcast to a common batch shape.
    """
    return _solve(couplings, field, beta, radius, tol, max_iter, warn)[0]


def saddle_log_partition(
    couplings: Tensor,
    field: Tensor,
    beta: Tensor,
    radius: float,
    multipliers: Tensor | None = None,
) -> Tensor:
    """Steepest-descent ln Z, differentiable to second order in couplings, field and beta.

    ``multipliers`` is the detached saddle t* (solved here when ``None``); one undamped Newton
    step t₁ = t* − H⁻¹∇Φ re-attaches it, so dt₁/dp is the implicit-function derivative.
    """
    if multipliers is None:
        multipliers = solve_saddle(couplings, field, beta, radius).solution
    t = multipliers.detach()
    grad, hess, _ = saddle_gradient_hessian(t, couplings, field, beta, radius)
    # The Hessian's own derivatives multiply ∇Φ(t*) = 0, so it enters detached.
    t1 = t - _newton_step(hess.detach(), grad)
    return saddle_potential(t1, couplings, field, beta, radius)


def saddle_magnetization(
    couplings: Tensor, field: Tensor, beta: Tensor, radius: float, multipliers: Tensor
) -> Tensor:
    """Closed-form m = β V(t*)⁻¹ h at the saddle (the envelope-theorem route)."""
    return saddle_gradient_hessian(multipliers, couplings, field, beta, radius)[2]


class _SaddleResponse(torch.autograd.Function):
    """(m, ln Z) = (βV(t*)⁻¹h, Φ(t*)) from the closed forms at the saddle, with a closed-form
    backward (see :func:`saddle_response`)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        couplings: Tensor,
        field: Tensor,
        beta: Tensor,
        forms: _ClosedForms,
        radius: float,
    ) -> tuple[Tensor, Tensor]:
        n, dim = field.shape[-2], field.shape[-1]
        mag = forms.mag.clone()  # βGh, computed with the factors
        const = dim / 2.0 - dim / 2.0 * math.log(dim / radius**2)
        # Φ(t*) with β²Σ_a h_aᵀV⁻¹h_a = β⟨h, m⟩
        log_z = (
            radius**2 * forms.multipliers.sum(-1)
            - 0.5 * dim * forms.logdet
            + 0.5 * beta * (field * mag).sum((-1, -2))
            - n * const
        )
        ctx.save_for_backward(couplings, field, beta, mag)
        ctx.forms, ctx.radius = forms, radius
        ctx.set_materialize_grads(False)  # an output that is not used costs nothing
        return mag, log_z

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_mag: Tensor | None, grad_log_z: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        couplings, field, beta, mag = ctx.saved_tensors
        forms: _ClosedForms = ctx.forms
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():  # a differentiable backward (create_graph): autograd's route
            grads = _response_vjp_by_autograd(
                couplings, field, beta, forms.multipliers, ctx.radius, grad_mag, grad_log_z,
                needs[:3],
            )  # fmt: skip
            return (*grads, None, None)
        green, dim = forms.green, field.shape[-1]
        b = beta[..., None, None]
        # ∂L/∂J = ½(p mᵀ + m pᵀ) + D·G diag(v) G + γG (symmetric), ∂L/∂h = βq (+ the ln Z part)
        grad_field = p = torch.zeros_like(field)
        v = gamma = None
        if grad_mag is not None:
            # dm = βG dh − G dV m + dβ G h, dV = 2 diag(dt) − dβ J − β dJ, and dt from
            # ∇Φ(t*) = 0 (implicit function theorem): one solve with the Hessian's factor.
            w = green @ grad_mag
            sens = -2.0 * (w * mag).sum(-1)  # ∂L/∂t at fixed (J, h, β)
            solved = _over_batch(
                lambda *args: (_solve_hessian(*args),),
                beta.shape,
                forms.hess,
                forms.hess_chol,
                forms.hess_ok,
                sens,
            )
            u = _join(solved, 0, beta.shape)
            q = w + 2.0 * (green @ (u[..., None] * mag))
            grad_field = p = b * q
            v = beta[..., None] * u
        if grad_log_z is not None:  # the envelope theorem: t* held fixed
            c = grad_log_z[..., None, None] * b
            grad_field = grad_field + c * mag
            p = p + 0.5 * c * mag
            gamma = 0.5 * dim * c
        weight = torch.cat([0.5 * p, 0.5 * mag], -1) @ torch.cat([mag, p], -1).transpose(-1, -2)
        if v is not None:
            weight = _addmm(weight, green * v[..., None, :], green, beta=1.0, alpha=dim)
        if gamma is not None:
            weight = weight + gamma * green
        grad_beta = None
        if needs[2]:  # Φ depends on (βJ, βh) only, so β ∂/∂β = J·∂/∂J + h·∂/∂h
            grad_beta = (weight * couplings).sum((-1, -2)) + (grad_field * field).sum((-1, -2))
            grad_beta = grad_beta / beta
        return (
            weight if needs[0] else None,
            grad_field if needs[1] else None,
            grad_beta,
            None,
            None,
        )


def _response_vjp_by_autograd(
    couplings: Tensor,
    field: Tensor,
    beta: Tensor,
    multipliers: Tensor,
    radius: float,
    grad_mag: Tensor | None,
    grad_log_z: Tensor | None,
    needs: tuple[bool, ...],
) -> tuple[Tensor | None, ...]:
    """The backward of :class:`_SaddleResponse` through :func:`saddle_log_partition` and its
    autograd field derivative, differentiable once more (for ``create_graph=True``)."""
    field_in = field if field.requires_grad else field.detach().requires_grad_(True)
    log_z = saddle_log_partition(couplings, field_in, beta, radius, multipliers)
    (dfield,) = torch.autograd.grad(log_z.sum(), field_in, create_graph=True)
    total = log_z.new_zeros(())
    if grad_mag is not None:
        total = total + (dfield / beta[..., None, None] * grad_mag).sum()
    if grad_log_z is not None:
        total = total + (log_z * grad_log_z).sum()
    inputs = (couplings, field_in, beta)
    wanted = [x for x, need in zip(inputs, needs, strict=True) if need]
    grads = iter(torch.autograd.grad(total, wanted, allow_unused=True, create_graph=True))
    out = [next(grads) if need else None for need in needs]
    return tuple(g if g is not None or not need else torch.zeros_like(x)
                 for g, need, x in zip(out, needs, inputs, strict=True))  # fmt: skip


def saddle_response(
    couplings: Tensor,
    field: Tensor,
    beta: Tensor,
    radius: float,
    tol: float = 1e-10,
    max_iter: int = 100,
    warn: bool = True,
) -> tuple[Tensor, Tensor, FixedPointResult]:
    """Magnetization m = βV(t*)⁻¹h = β⁻¹∂ln Z/∂h and ln Z = Φ(t*) at the saddle, with the solve.

    Shapes as :func:`solve_saddle` (already broadcast). As in :func:`saddle_log_partition`, m
    and ln Z are taken at one undamped Newton step t₁ = t* − H⁻¹∇Φ past the solution (one
    more Cholesky factor of V), which squares their error. They are differentiable in
    couplings, field and beta by a closed-form backward instead of autograd through the
    derivative of :func:`saddle_log_partition` (same values up to rounding, a fraction of the
    cost): with G = V⁻¹ and the solver's last factors at t*, the sensitivity of m to t is
    carried through the implicit function theorem, dt* = −H⁻¹ ∂(∇Φ), which is one more solve
    with the Hessian's Cholesky factor, and ln Z's derivatives are the envelope theorem's
    (t* fixed). The couplings' gradient is symmetrised, as for a symmetric matrix (the same
    convention as Cholesky's backward). A backward with ``create_graph=True`` takes the autograd
    route, so higher derivatives stay available.
    """
    result, newton = _solve(couplings, field, beta, radius, tol, max_iter, warn)
    forms = newton.refined(result.solution)
    mag, log_z = _SaddleResponse.apply(couplings, field, beta, forms, radius)
    return mag, log_z, result


@register_method("saddle", VectorSpinModel)
def saddle_thermodynamics(
    model: VectorSpinModel,
    tol: float = 1e-10,
    max_iter: int = 100,
    susceptibility: bool = True,
) -> Thermodynamics:
    """Steepest-descent thermodynamics of a (symmetric) vector-spin model; see the module docstring.

    Every observable is an autodiff derivative of the saddle ln Z. ``extras`` holds the
    multipliers t* and the solver residual.
    """
    couplings = model.coupling_matrix
    check_symmetric(couplings, "couplings")
    batch = model.batch_shape
    couplings = couplings.expand(*batch, *couplings.shape[-2:])
    field, beta = model.expanded_field(), model.expanded_beta()
    result = solve_saddle(couplings, field, beta, model.radius, tol, max_iter)
    t_star = result.solution

    def log_partition(field_: Tensor, beta_: Tensor) -> Tensor:
        return saddle_log_partition(couplings, field_, beta_, model.radius, t_star)

    return thermodynamics_from_log_partition(
        log_partition,
        model,
        "saddle",
        susceptibility=susceptibility,
        converged=result.converged,
        iterations=result.iterations,
        extras={"residual": result.residual, "multipliers": t_star},
    )
