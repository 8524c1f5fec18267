r"""The Onsager reaction term of TAP mean field, once per spin type.

Plefka's expansion of the Gibbs free energy in the couplings (Plefka, "Convergence condition of
the TAP equation for the infinite-ranged Ising spin glass model", J. Phys. A 15, 1971, 1982)
adds, at second order, the Onsager term of Thouless, Anderson & Palmer ("Solution of 'Solvable
model of a spin glass'", Phil. Mag. 35, 593, 1977) to the naive mean-field ln Z:

.. math::

    O = \frac{\beta^2}{4}\sum_{i\ne j} J_{ij}^2\,\operatorname{tr}(C_i C_j),

with C_i the covariance of spin i in its effective field (:func:`onsager_term`). Its gradient
is the reaction field Ω_i that TAP subtracts from the naive field, θ_i = h_i + Σ_j J_ij m_j − Ω_i:

* Ising spins (C_i = 1 − m_i²): Ω_i = β m_i Σ_j J_ij²(1 − m_j²) (:func:`ising_reaction`), the
  textbook TAP equation. With the site's own mean at time t and the others' at t − 1 it is the
  reaction field of the dynamical TAP equations (Roudi & Hertz, "Dynamical TAP equations for
  non-equilibrium Ising spin glasses", J. Stat. Mech. P03031, 2011).
* vector spins with the exact von Mises–Fisher covariance, written in the effective fields θ
  (:func:`vector_reaction`): Ω_i = −β⁻² C_i⁻¹ ∂O/∂θ_i, because ∂m_i/∂θ_i = βC_i.
* vector spins with the large-D response φ and its isotropic tangential covariance
  b_i = (R² − |m_i|²)/(2R²) (:func:`large_d_reaction`): O = (β²/4) Σ J_ij² D b_i b_j, so
  Ω_i = −β⁻¹ ∂O/∂m_i = β (D/2R²) m_i Σ_j J_ij² b_j.

The couplings enter only through Σ_j J_ij² x_j (and, for anisotropic covariances, a sum over
pairs), applied by :class:`SiteCouplings` to a dense matrix or, in O(N), the complete graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spinformer.physics import vmf

__all__ = [
    "SiteCouplings",
    "ising_reaction",
    "large_d_reaction",
    "onsager_term",
    "vector_onsager",
    "vector_reaction",
]


class SiteCouplings:
    """J applied to site vectors: a dense (..., N, N) matrix or the complete graph J_ij = c.

    ``SiteCouplings(matrix)`` for dense couplings (zero diagonal), ``SiteCouplings.complete(c)``
    for the complete graph with bond strength ``c`` (a tensor broadcast over the batch).
    """

    def __init__(self, matrix: Tensor) -> None:
        self.complete = False
        self.matrix = matrix
        self.squared = matrix**2

    @classmethod
    def complete_graph(cls, strength: Tensor) -> SiteCouplings:
        """J_ij = c for all i ≠ j, applied in O(N)."""
        self = cls.__new__(cls)
        self.complete = True
        self.strength = strength
        return self

    def apply(self, x: Tensor, vector: bool, squared: bool = False) -> Tensor:
        """Σ_j J_ij x_j (or Σ_j J_ij² x_j) for x (..., N) or, if ``vector``, (..., N, D)."""
        if self.complete:
            c = self.strength**2 if squared else self.strength
            c = c.reshape(*c.shape, *([1] * (2 if vector else 1)))
            return c * (x.sum(dim=-2 if vector else -1, keepdim=True) - x)
        matrix = self.squared if squared else self.matrix
        return matrix @ x if vector else (matrix @ x[..., None])[..., 0]

    def overlap_squared(self, weight: Tensor, theta: Tensor) -> Tensor:
        """Σ_ij J_ij² w_i w_j (θ_i·θ_j)² for w (..., N), θ (..., N, D)."""
        if self.complete:
            weighted = weight[..., None, None] * theta[..., :, None] * theta[..., None, :]
            total = weighted.sum(-3)
            diagonal = (weight * (theta * theta).sum(-1)) ** 2
            return self.strength**2 * ((total * total).sum((-1, -2)) - diagonal.sum(-1))
        gram = (theta @ theta.transpose(-1, -2)) ** 2
        return (self.squared * gram * weight[..., :, None] * weight[..., None, :]).sum((-1, -2))


def onsager_term(
    beta: Tensor,
    couplings: SiteCouplings,
    variance: Tensor,
    dim: int = 1,
    excess: Tensor | None = None,
    theta: Tensor | None = None,
) -> Tensor:
    """O = (β²/4) Σ_ij J_ij² tr(C_i C_j) for covariances C_i = b_i 1 + e_i θ_iθ_iᵀ (J_ii = 0).

    ``variance`` is b (..., N) and ``dim`` the number of components D (1 for Ising spins,
    C_i = b_i = 1 − m_i²); ``excess`` e (..., N) with the directions ``theta`` (..., N, D) adds
    the anisotropic part: tr(C_iC_j) = D b_i b_j + d_i b_j + b_i d_j + e_i e_j (θ_i·θ_j)²,
    d = e|θ|². ``beta`` has the batch shape (...); so does the result.
    """
    spread = couplings.apply(variance, False, squared=True)
    if excess is None:
        trace = ((dim * variance) * spread).sum(-1)
    else:
        anisotropy = excess * (theta * theta).sum(-1)
        trace = ((dim * variance + 2.0 * anisotropy) * spread).sum(-1)
        trace = trace + couplings.overlap_squared(excess, theta)
    return 0.25 * beta**2 * trace


def vector_onsager(theta: Tensor, beta: Tensor, radius: float, couplings: SiteCouplings) -> Tensor:
    """:func:`onsager_term` of von Mises–Fisher spins in fields θ (..., N, D), ``beta`` (...)."""
    _, b, e = vmf.covariance(theta, beta[..., None], radius)
    return onsager_term(beta, couplings, b, theta.shape[-1], e, theta)


def ising_reaction(
    m: Tensor, beta: Tensor | float, couplings: SiteCouplings, others: Tensor | None = None
) -> Tensor:
    """Ω_i = β m_i Σ_j J_ij² (1 − o_j²), o = ``others`` (default m): the Ising TAP reaction.

    ``m`` (..., N); ``beta`` broadcasts against it. ``others`` are the means whose variances
    1 − o_j² enter (the previous time step in the dynamical TAP equations).
    """
    o = m if others is None else others
    return beta * m * couplings.apply(1.0 - o * o, False, squared=True)


def large_d_reaction(
    m: Tensor, beta: Tensor | float, radius: float, couplings: SiteCouplings
) -> Tensor:
    """Ω_i = β (D/2R²) m_i Σ_j J_ij² b_j, b_j = (R² − |m_j|²)/(2R²), for m (..., N, D).

    The TAP reaction of large-D vector spins with the isotropic covariance b_j 1 of φ
    (:func:`spinformer.physics.vmf.large_d_covariance`); ``beta`` broadcasts against m.
    """
    tangential, _ = vmf.large_d_covariance(m, radius)
    scale = m.shape[-1] / (2.0 * radius**2)
    return beta * scale * m * couplings.apply(tangential, False, squared=True)[..., None]


def vector_reaction(theta: Tensor, beta: Tensor, radius: float, couplings: SiteCouplings) -> Tensor:
    """Ω = −β⁻² C⁻¹ ∂O/∂θ for von Mises–Fisher spins in fields θ (..., N, D), ``beta`` (...).

    The TAP update is θ ← h + Jm − Ω. Differentiable (``create_graph``) whenever grad is on.
    C⁻¹g = g/b − e/(ab) θ(θ·g), since 1/a − 1/b = −e|θ|²/(ab).
    """
    differentiable = torch.is_grad_enabled()
    with torch.enable_grad():
        leaf = theta if theta.requires_grad else theta.detach().requires_grad_(True)
        onsager = vector_onsager(leaf, beta, radius, couplings)
        (grad,) = torch.autograd.grad(onsager.sum(), leaf, create_graph=differentiable)
    a, t, e = vmf.covariance(leaf if differentiable else theta, beta[..., None], radius)
    along = (theta * grad).sum(-1, keepdim=True)
    inverse = grad / t[..., None] - (e / (a * t))[..., None] * theta * along
    return -(inverse / beta[..., None, None] ** 2)
