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

__all__ = ["fixed_point_log_partition", "map_jacobian", "stationary_log_partition"]

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
        out = fixed_map(z, field.detach(), beta.detach()).reshape(*batch, -1)
        rows = [
            torch.autograd.grad(out[..., k].sum(), z, retain_graph=True)[0].reshape(*batch, -1)
            for k in range(out.shape[-1])
        ]
    return torch.stack(rows, dim=-2)


def fixed_point_log_partition(
    potential: Callable[[Tensor, Tensor, Tensor], Tensor],
    fixed_map: FixedPointMap,
    z_star: Tensor,
    complement: Tensor,
    field: Tensor,
    beta: Tensor,
) -> Tensor:
    """Φ(z₁(h, β); h, β) with z₁ = z* + K⁻¹(F(z*) − z*) and K = ``complement`` = 1 − ∂F/∂z.

    ``potential(z, field, beta)`` returns Φ with shape ``beta.shape``; ``complement`` is the
    detached (*batch, n, n) matrix of :func:`map_jacobian` subtracted from the identity.
    """
    batch = beta.shape
    z = z_star.detach()
    with torch.enable_grad():
        residual = fixed_map(z, field, beta) - z
        step = torch.linalg.solve(complement, residual.reshape(*batch, -1, 1))[..., 0]
        return potential(z + step.reshape(z.shape), field, beta)
