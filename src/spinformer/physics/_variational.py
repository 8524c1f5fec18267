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
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["stationary_log_partition"]

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
