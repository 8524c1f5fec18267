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


def von_mises_fisher(
    mean_direction: Tensor,
    kappa: Tensor,
    generator: torch.Generator | None = None,
    candidates: int = 4,
) -> Tensor:
    r"""Unit vectors from the von Mises–Fisher density :math:`\propto e^{\kappa\,\mu\cdot x}` on S^{D−1}.

    Wood's algorithm (1994): the cosine :math:`w = \mu\cdot x` is drawn by rejection from a
    Beta-based envelope, then :math:`x = w\mu + \sqrt{1-w^2}\,v` with :math:`v` uniform on the
    sphere orthogonal to :math:`\mu`. The Beta((D−1)/2, (D−1)/2) variate is (1 + t)/2 with t the
    first coordinate of a uniform point on S^{D−1}, so only Gaussian and uniform draws are used
    (and ``generator`` makes them reproducible). ``candidates`` proposals are drawn per round in
    one batch; rounds repeat only for the rare entries with none accepted.

    Args:
        mean_direction: (..., D) with D ≥ 2; normalised here (a zero vector means κ = 0 and
            gives the uniform distribution).
        kappa: (...) concentrations ≥ 0.
    """
    dim = mean_direction.shape[-1]
    if dim < 2:
        raise ValueError(f"mean_direction must have a last dimension D >= 2, got {dim}")
    dtype, device = mean_direction.dtype, mean_direction.device
    kappa = kappa.to(dtype)
    if bool((kappa < 0).any()):
        raise ValueError("kappa must be non-negative")
    norm = mean_direction.norm(dim=-1, keepdim=True)
    axis = torch.zeros_like(mean_direction)
    axis[..., 0] = 1.0
    mu = torch.where(norm > 0, mean_direction / norm.clamp_min(torch.finfo(dtype).tiny), axis)
    d1 = dim - 1.0
    b = d1 / (2.0 * kappa + torch.sqrt(4.0 * kappa**2 + d1**2))
    x0 = (1.0 - b) / (1.0 + b)
    c = kappa * x0 + d1 * torch.log1p(-(x0**2))
    shape = kappa.shape
    w = torch.zeros(shape, dtype=dtype, device=device)
    pending = torch.ones(shape, dtype=torch.bool, device=device)
    while True:
        g = torch.randn(candidates, *shape, dim, dtype=dtype, device=device, generator=generator)
        z = 0.5 * (1.0 + g[..., 0] / g.norm(dim=-1))
        u = torch.rand(candidates, *shape, dtype=dtype, device=device, generator=generator)
        w_c = (1.0 - (1.0 + b) * z) / (1.0 - (1.0 - b) * z)
        accept = kappa * w_c + d1 * torch.log1p(-x0 * w_c) - c >= torch.log(u)
        first = accept.to(torch.int8).argmax(dim=0, keepdim=True)
        found = accept.any(dim=0)
        take = pending & found
        w = torch.where(take, w_c.gather(0, first).squeeze(0), w)
        pending = pending & ~found
        if not bool(pending.any()):  # one sync per round; almost always a single round
            break
    g = torch.randn(*shape, dim, dtype=dtype, device=device, generator=generator)
    v = g - (g * mu).sum(-1, keepdim=True) * mu
    v = v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    return w[..., None] * mu + torch.sqrt((1.0 - w**2).clamp_min(0.0))[..., None] * v


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
