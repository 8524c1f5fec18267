r"""Single-site updates: the Metropolis and heat-bath moves of Ising and vector spins.

A move at site :math:`i` changes the energy by :math:`\Delta E = -(\sigma_i' - \sigma_i)\cdot
h^\text{loc}_i` with the local field :math:`h^\text{loc}_i = h_i + \sum_j J_{ij}\sigma_j`.
Metropolis (Metropolis et al. 1953) accepts a symmetric proposal with :math:`\min(1,
e^{-\beta\Delta E})`; Ising flips are accepted with :math:`(1 - \epsilon)\min(1, e^{-\beta\Delta
E})`, lazy Metropolis (see :mod:`spinformer.physics.montecarlo`). The heat bath (Glauber) draws
:math:`\sigma_i'` from its conditional distribution: :math:`P(\sigma_i' = +1) = 1/(1 +
e^{-2\beta h^\text{loc}_i})` for Ising spins, and for vector spins of radius :math:`R` the von
Mises–Fisher distribution with concentration :math:`\kappa = \beta R|h^\text{loc}_i|`, sampled
exactly by Wood's rejection algorithm (Commun. Stat. Simul. 23, 157, 1994).
"""

from __future__ import annotations

import torch
from torch import Tensor

from spinformer.physics.vmf import von_mises_fisher

__all__ = [
    "LAZY_DIGITS",
    "ising_site_update",
    "lazy_digits",
    "vector_site_update",
    "von_mises_fisher",
]

LAZY_DIGITS = 8  # lazy Metropolis declines a move with probability >= 2^-8 (see lazy_digits)


def lazy_digits(num_sites: int) -> int:
    """λ of the lazy Metropolis rate ε = 2^-λ: min(8, ⌊log₂ N⌋), at least 1.

    Every Ising Metropolis move is declined with probability ε (:mod:`spinformer.physics.
    montecarlo` explains why: plain Metropolis sweeps are reducible on small tori). N ε ≥ 1, so
    a state trapped in a deterministic flip cycle leaves it within about a sweep, while large
    lattices lose at most 0.4 % of their moves.
    """
    return max(1, min(LAZY_DIGITS, num_sites.bit_length() - 1))


# -- single-site kernels ---------------------------------------------------------------------


def _rand(like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(like.shape, dtype=like.dtype, device=like.device, generator=generator)


def ising_site_update(
    spins: Tensor,
    local: Tensor,
    beta: Tensor,
    method: str,
    generator: torch.Generator | None,
    keep: float,
) -> tuple[Tensor, Tensor]:
    """New Ising spins for the sites in ``spins`` given their local fields; (new, changed).

    Metropolis is lazy: a flip is accepted with ``keep · min(1, e^{−βΔE})`` (module docstring).
    """
    u = _rand(spins, generator)
    if method == "metropolis":
        boltzmann = torch.exp(-2.0 * beta * spins * local).clamp(max=1.0)
        flip = u < keep * boltzmann
        return torch.where(flip, -spins, spins), flip
    up = u < torch.sigmoid(2.0 * beta * local)
    new = torch.where(up, torch.ones_like(spins), -torch.ones_like(spins))
    return new, new != spins


def vector_site_update(
    spins: Tensor,
    local: Tensor,
    beta: Tensor,
    radius: float,
    method: str,
    step_size: float | None,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor]:
    """New vector spins (..., D) given local fields (..., D); beta broadcasts against (...)."""
    if method == "heat_bath":
        kappa = beta * radius * local.norm(dim=-1)
        new = radius * von_mises_fisher(local, kappa, generator)
        return new, torch.ones(new.shape[:-1], dtype=torch.bool, device=new.device)
    g = torch.randn(spins.shape, dtype=spins.dtype, device=spins.device, generator=generator)
    proposal = g if step_size is None else spins / radius + step_size * g
    proposal = radius * proposal / proposal.norm(dim=-1, keepdim=True)
    delta = -((proposal - spins) * local).sum(-1)
    accept = torch.rand(delta.shape, dtype=delta.dtype, device=delta.device, generator=generator)
    accept = accept < torch.exp(-beta * delta)
    return torch.where(accept[..., None], proposal, spins), accept
