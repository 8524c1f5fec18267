r"""Log partition functions of variational (stationary-point) approximations, exact to 2nd order.

Mean field, TAP and the steepest-descent approximation all have the form

.. math::

    \ln Z(h, \beta) \approx \Phi(z^*; h, \beta), \qquad \partial_z \Phi(z^*; h, \beta) = 0,

for a variational parameter z (effective fields, Lagrange multipliers). The stationary point is
found by a fixed-point solver without autograd; this module then makes :math:`\ln Z(h,\beta)`
differentiable *to second order* with one Newton step from the detached solution,

.. math::

    z_1(h, \beta) = z^* - H^{-1} \nabla_z\Phi, \qquad H = \nabla_z^2 \Phi .

At z* the gradient vanishes, so z₁ = z* and dz₁/dp = −H⁻¹Φ_{zp} is the implicit-function
derivative of the stationary point. Hence Φ(z₁(h, β); h, β) has the exact first derivatives
(envelope theorem: m = β⁻¹ ∂Φ/∂h) and the exact second derivatives
Φ_pq − Φ_pz H⁻¹ Φ_zq (susceptibility, heat capacity), which is what
:func:`~spinformer.physics.thermo.thermodynamics_from_log_partition` needs.

Any z₁(p) with z₁ = z* and the right first derivative does the same, because the second
derivative of z₁ multiplies ∇_zΦ = 0. When the stationary point is the fixed point of a map,
z* = F(z*; h, β) (mean field, TAP), :func:`fixed_point_log_partition` takes the Newton step of
the residual instead,

.. math::

    z_1 = z^* + K^{-1}\big(F(z^*; h, \beta) - z^*\big), \qquad K = 1 - \partial_z F .

That is the better conditioned form: for mean field ∇_zΦ = βM(F − z) with M = ∂m/∂z, so
H = −βMK vanishes with M when the spins saturate (β → ∞), while K → 1 stays invertible. It
also decides local stability: MK is symmetric, so K is similar to M^{1/2}KM^{-1/2}, its
eigenvalues are real, and the stationary point is a local maximum of Φ (a minimum of the
variational free energy) exactly when they are all positive.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "ResidualOperator",
    "fixed_point_log_partition",
    "map_jacobian",
    "stationary_log_partition",
]

FixedPointMap = Callable[[Tensor, Tensor, Tensor], Tensor]

Potential = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def _hessian(potential: Potential, z_star: Tensor, field: Tensor, beta: Tensor, couplings: Tensor):
    """Detached per-sample Hessian (*batch, n, n): one reverse pass per component of z."""
    batch = beta.shape
    with torch.enable_grad():
        z = z_star.detach().requires_grad_(True)
        phi = potential(z, field.detach(), beta.detach(), couplings.detach())
        (grad,) = torch.autograd.grad(phi.sum(), z, create_graph=True)
        flat = grad.reshape(*batch, -1)
        rows = [
            torch.autograd.grad(flat[..., k].sum(), z, retain_graph=True)[0].reshape(*batch, -1)
            for k in range(flat.shape[-1])
        ]
    return torch.stack(rows, dim=-2)


def stationary_log_partition(
    potential: Potential, z_star: Tensor, field: Tensor, beta: Tensor, couplings: Tensor
) -> Tensor:
    """Φ(z₁(h, β); h, β) with z₁ one Newton step from the stationary point ``z_star``.

    ``potential(z, field, beta, couplings)`` returns Φ with shape ``beta.shape``; ``z_star``,
    ``field`` and ``couplings`` carry the full batch shape ``beta.shape`` in front. The Hessian
    is evaluated detached (batch entries are independent, so the Hessian of the summed Φ is
    block-diagonal and one pass per component fills every block): at z* the gradient vanishes,
    so the Hessian's own derivatives never reach the first or second derivatives of ln Z.
    """
    batch = beta.shape
    hessian = _hessian(potential, z_star, field, beta, couplings)
    n = hessian.shape[-1]
    with torch.enable_grad():
        z = z_star.detach().requires_grad_(True)
        phi = potential(z, field, beta, couplings)
        (grad,) = torch.autograd.grad(phi.sum(), z, create_graph=True)
        step = torch.linalg.solve(hessian, grad.reshape(*batch, n, 1))[..., 0]
        return potential(z - step.reshape(z.shape), field, beta, couplings)


def map_jacobian(
    fixed_map: FixedPointMap, z_star: Tensor, field: Tensor, beta: Tensor, batch_ndim: int
) -> Tensor:
    """Detached ∂F/∂z, shape (*batch, n, n) with n the number of components of one sample.

    ``z_star`` is (*batch, *event) with ``batch_ndim`` batch dims (``field`` and ``beta``
    broadcast against them); ``fixed_map(z, field, beta)`` must treat batch entries
    independently (one reverse pass per component fills every block).
    """
    batch = z_star.shape[:batch_ndim]
    with torch.enable_grad():
        z = z_star.detach().requires_grad_(True)
        out = fixed_map(z, field.detach(), beta.detach())
        n = out[(0,) * batch_ndim].numel()
        eye = torch.eye(n, dtype=out.dtype, device=out.device)
        seeds = eye.reshape(n, *([1] * batch_ndim), *out.shape[batch_ndim:]).expand(n, *out.shape)
        try:  # all rows in one vectorized reverse pass
            (rows,) = torch.autograd.grad(out, z, seeds, retain_graph=True, is_grads_batched=True)
        except RuntimeError:  # an op without a batching rule: one pass per row
            rows = torch.stack(
                [torch.autograd.grad(out, z, s, retain_graph=True)[0] for s in seeds]
            )
    return rows.reshape(n, *batch, n).movedim(0, -2)


def fixed_point_log_partition(
    potential: Callable[[Tensor, Tensor, Tensor], Tensor],
    fixed_map: FixedPointMap,
    z_star: Tensor,
    complement: Tensor | ResidualOperator,
    field: Tensor,
    beta: Tensor,
) -> Tensor:
    """Φ(z₁(h, β); h, β) with z₁ = z* + K⁻¹(F(z*) − z*) and K = ``complement`` = 1 − ∂F/∂z.

    ``potential(z, field, beta)`` returns Φ with shape ``beta.shape``; ``complement`` is the
    detached (*batch, n, n) matrix of :func:`map_jacobian` subtracted from the identity, or a
    :class:`ResidualOperator` (large models: K is applied, never formed).
    """
    batch = beta.shape
    z = z_star.detach()
    with torch.enable_grad():
        residual = fixed_map(z, field, beta) - z
        if isinstance(complement, ResidualOperator):
            step = complement.solve(residual)
        else:
            step = torch.linalg.solve(complement, residual.reshape(*batch, -1, 1))[..., 0]
        return potential(z + step.reshape(z.shape), field, beta)


# -- matrix-free K for large models ---------------------------------------------------------------


def _arnoldi(matvec: Callable[[Tensor], Tensor], start: Tensor, iters: int, tol: float):
    """Arnoldi from ``start`` (*batch, n): orthonormal basis (*batch, k+1, n), Hessenberg
    (*batch, k+1, k) and the initial norms; stops when every batch entry's GMRES residual is
    below ``tol`` times its initial norm (checked every few steps)."""
    norm0 = start.norm(dim=-1)
    tiny = torch.finfo(start.dtype).tiny
    basis = [start / norm0.clamp_min(tiny)[..., None]]
    columns: list[Tensor] = []
    for j in range(iters):
        w = matvec(basis[j])
        column = []
        for v in basis:  # modified Gram-Schmidt, twice (the second pass restores orthogonality)
            h = (w * v).sum(-1)
            w = w - h[..., None] * v
            column.append(h)
        for i, v in enumerate(basis):
            h = (w * v).sum(-1)
            w = w - h[..., None] * v
            column[i] = column[i] + h
        size = w.norm(dim=-1)
        column.append(size)
        columns.append(torch.stack(column + [size.new_zeros(size.shape)] * (iters - j - 1), -1))
        basis.append(w / size.clamp_min(tiny)[..., None])
        if (j + 1) % 4 == 0 or j + 1 == iters:
            hess = torch.stack(columns, -1)[..., : j + 2, :]
            residual = _least_squares(hess, norm0)[1]
            if bool((residual <= tol * norm0 + tiny).all()):
                break
    hess = torch.stack(columns, -1)
    k = hess.shape[-1]
    return torch.stack(basis[: k + 1], -2), hess[..., : k + 1, :], norm0


def _least_squares(hess: Tensor, norm0: Tensor) -> tuple[Tensor, Tensor]:
    """y minimising |‖r₀‖e₁ − H y| and that residual norm, per batch entry."""
    rhs = torch.zeros(*hess.shape[:-1], 1, dtype=hess.dtype, device=hess.device)
    rhs[..., 0, 0] = norm0
    y = torch.linalg.lstsq(hess, rhs).solution
    return y[..., 0], (hess @ y - rhs)[..., 0].norm(dim=-1)


class ResidualOperator:
    """K = 1 − ∂F/∂z at a detached stationary point, applied without forming it.

    Products Kv and Kᵀv are one forward-mode (double-backward) or reverse-mode pass through F,
    so memory and time stay those of F itself (O(N) for the complete graph). Linear systems are
    solved by GMRES (Saad & Schultz, "GMRES", SIAM J. Sci. Stat. Comput. 7, 856, 1986) and the
    smallest eigenvalue is estimated from the Ritz values of an Arnoldi run.
    """

    def __init__(
        self,
        fixed_map: FixedPointMap,
        z_star: Tensor,
        field: Tensor,
        beta: Tensor,
        batch_ndim: int,
        tol: float = 1e-14,
        max_iter: int = 60,
    ) -> None:
        self.shape = z_star.shape
        self.batch = z_star.shape[:batch_ndim]
        self.tol, self.max_iter = tol, max_iter
        with torch.enable_grad():
            self._z = z_star.detach().requires_grad_(True)
            self._y = fixed_map(self._z, field.detach(), beta.detach())
            self._u = torch.zeros_like(self._y, requires_grad=True)
            (g,) = torch.autograd.grad(
                self._y, self._z, self._u, create_graph=True, allow_unused=True
            )
        self._g = g

    def _flat(self, x: Tensor) -> Tensor:
        return x.reshape(*self.batch, -1)

    def matvec(self, v: Tensor) -> Tensor:
        """K v for v (*batch, n)."""
        if self._g is None or not self._g.requires_grad:
            return v
        with torch.enable_grad():
            (jv,) = torch.autograd.grad(
                self._g, self._u, v.reshape(self.shape), retain_graph=True, allow_unused=True
            )
        return v if jv is None else v - self._flat(jv.detach())

    def rmatvec(self, v: Tensor) -> Tensor:
        """Kᵀ v for v (*batch, n)."""
        if not self._y.requires_grad:
            return v
        with torch.enable_grad():
            (vj,) = torch.autograd.grad(
                self._y, self._z, v.reshape(self.shape), retain_graph=True, allow_unused=True
            )
        return v if vj is None else v - self._flat(vj.detach())

    def _gmres(self, apply: Callable[[Tensor], Tensor], rhs: Tensor) -> Tensor:
        flat = self._flat(rhs.detach())
        n = flat.shape[-1]
        basis, hess, norm0 = _arnoldi(apply, flat, min(self.max_iter, n), self.tol)
        y, _ = _least_squares(hess, norm0)
        return (y[..., :, None] * basis[..., : y.shape[-1], :]).sum(-2).reshape(rhs.shape)

    def solve(self, rhs: Tensor) -> Tensor:
        """K⁻¹ rhs, differentiable in rhs (the adjoint is a solve with Kᵀ)."""
        return _Solve.apply(rhs, self, False)

    def smallest_eigenvalue(self, iters: int = 24) -> Tensor:
        """Smallest real part among the Ritz values of K (*batch), from a fixed start vector."""
        n = int(torch.tensor(self.shape[len(self.batch) :]).prod())
        generator = torch.Generator(device="cpu").manual_seed(0)
        start = torch.rand(n, generator=generator, dtype=self._z.dtype).to(self._z.device) + 0.5
        start = start.expand(*self.batch, n).contiguous()
        _, hess, _ = _arnoldi(self.matvec, start, min(iters, n), 0.0)
        k = hess.shape[-1]
        return torch.linalg.eigvals(hess[..., :k, :k]).real.amin(-1)


class _Solve(torch.autograd.Function):
    """K⁻¹ rhs (``transposed``: K⁻ᵀ rhs); the adjoint of either is a solve with the other."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, rhs: Tensor, op: ResidualOperator, transposed: bool
    ) -> Tensor:
        ctx.op, ctx.transposed = op, transposed
        return op._gmres(op.rmatvec if transposed else op.matvec, rhs)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return _Solve.apply(grad, ctx.op, not ctx.transposed), None, None
