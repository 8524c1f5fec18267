r"""Markov-chain Monte Carlo for Ising and vector-spin models, many chains as one tensor program.

Every sampler leaves the Boltzmann distribution :math:`p(\sigma) \propto e^{-\beta E(\sigma)}` of
:mod:`spinformer.physics.models` invariant (detailed balance), with
:math:`E = -\tfrac12\sum_{ij}J_{ij}\sigma_i\cdot\sigma_j - \sum_i h_i\cdot\sigma_i`. A single-site move
changes the energy by :math:`\Delta E = -(\sigma_i' - \sigma_i)\cdot h^\text{loc}_i` with the local
field :math:`h^\text{loc}_i = h_i + \sum_j J_{ij}\sigma_j`.

* **Metropolis** (Metropolis et al. 1953): propose :math:`\sigma_i'` (a flip for Ising; a uniform
  point of the sphere, or a Gaussian kick of size ``step_size`` renormalised to the sphere, for
  vector spins -- both symmetric proposals) and accept with :math:`\min(1, e^{-\beta\Delta E})`.
  Ising flips are accepted with :math:`(1 - \epsilon)\min(1, e^{-\beta\Delta E})`, "lazy"
  Metropolis (detailed balance holds for any :math:`\epsilon`), with
  :math:`\epsilon = 2^{-\lambda}`, :math:`\lambda = \min(8, \lfloor\log_2 N\rfloor)`
  (:func:`spinformer.physics.multispin.lazy_digits`): about one move in a sweep is declined,
  and at most 0.4 % of them on lattices of 256 sites or more. With plain Metropolis every
  :math:`\Delta E \le 0` flip is forced, and the parallel (checkerboard) sweep is
  *reducible* on small tori: a state in which every site has :math:`\Delta E = 0` (on a
  torus e.g. the column Néel state) flips whole sublattices back and forth forever, at any
  temperature. By exact reachability, 4 of the 16 states of the 2×2 torus, 4 of 256 (4×2) and
  36 of 65536 (4×4) lie outside the class of the ground state, so hot starts were biased
  (2×2 at β = 0.3: ⟨E⟩ converges to −4.34 instead of the exact −5.11; 4×4 at β = 0.44: E
  off by 4 standard errors with 16384 chains). With every move optional, any single site can
  be flipped while all others decline, so the chain is irreducible, and aperiodic.
* **Heat bath** (Glauber): draw :math:`\sigma_i'` from its exact conditional distribution. Ising:
  :math:`P(\sigma_i' = +1) = 1/(1 + e^{-2\beta h^\text{loc}_i})`. Vector spins of radius
  :math:`R`: von Mises–Fisher with concentration :math:`\kappa = \beta R |h^\text{loc}_i|` about
  :math:`\hat h^\text{loc}_i`, sampled exactly by Wood's rejection algorithm (Commun. Stat.
  Simul. 23, 157, 1994); its mean cosine is the Bessel ratio :math:`A_D(\kappa)` of
  :mod:`spinformer.physics.special`, the test of the sampler.
* **Wolff** (Phys. Rev. Lett. 62, 361, 1989): for ferromagnetic couplings (:math:`J_{ij}\ge0`) at
  zero field, grow a cluster from a random seed through aligned neighbours, each bond tested once
  with :math:`p_{ij} = 1 - e^{-2\beta J_{ij}}`, and flip it. Rejection-free, and its
  autocorrelation time at :math:`\beta_c` grows far more slowly with :math:`L` than Metropolis's.

Sites that do not interact can be updated simultaneously without breaking detailed balance, so a
sweep is a loop over *colour classes*, each updated in one vectorised step for all chains and
batch entries: the two checkerboard sublattices of a bipartite lattice (three colours when a
periodic side is odd), or the classes of a greedy colouring of the coupling graph for dense
models (a fully coupled model has N classes of one site -- single-site dynamics cannot be
parallelised there). Even periodic lattices store the two sublattices compactly, half a lattice
each, so every site costs one random number per sweep.

All tensors stay on the model's device and dtype (a float32 model samples in float32): the same
code runs on a GPU. Chains come first: states are ``(chains, *batch_shape, N)`` for Ising and
``(chains, *batch_shape, N, D)`` for vector spins, and time series ``(T, chains, *batch_shape)``.

One Wolff "sweep" is one cluster flip per chain; :attr:`MonteCarloSamples.acceptance` then
holds the mean flipped fraction, which converts cluster counts into sweep equivalents.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from spinformer._validation import check_positive_int
from spinformer.physics._limits import check_memory, show_progress
from spinformer.physics.autocorrelation import (
    estimate_mean,
    integrated_autocorrelation_time,
)
from spinformer.physics.models import (
    CompleteGraph,
    IsingModel,
    SquareLattice,
    VectorSpinModel,
    _SpinModel,
)
from spinformer.physics.multispin import MultispinIsing, lazy_digits, multispin_supported
from spinformer.physics.thermo import Thermodynamics, register_method

__all__ = [
    "ALGORITHMS",
    "ENGINES",
    "MonteCarloSamples",
    "autocorrelation_times",
    "sample",
    "von_mises_fisher",
]

ALGORITHMS = ("metropolis", "heat_bath", "wolff")
ENGINES = ("tensor", "multispin")


@dataclass(frozen=True)
class MonteCarloSamples:
    """The record of a Monte Carlo run (after burn-in).

    Attributes:
        energy: total energy E(σ) per measurement, ``(T, chains, *batch)``.
        magnetization: mean spin (1/N)Σσ_i, ``(T, chains, *batch)`` (Ising) or
            ``(T, chains, *batch, D)`` (vector).
        final_state: the last state, ``(chains, *batch, N[, D])``.
        mean_state: per-site time average of σ_i, ``(chains, *batch, N[, D])``.
        acceptance: mean accepted fraction of proposals per chain (heat bath: fraction changed;
            Wolff: mean fraction of spins flipped per cluster update), ``(chains, *batch)``.
        snapshots: states every ``snapshot_every`` measurements, ``(S, chains, *batch, N[, D])``.
        mean_correlation: ⟨σ_i σ_j⟩ averaged over chains and time, ``(*batch, N, N)`` (vector:
            ``(*batch, N, D, N, D)``), when requested.
        method: the algorithm.
        sweeps: number of recorded sweeps (cluster updates for Wolff) after burn-in.
        burn_in: discarded sweeps.
        measure_every: sweeps between measurements.
    """

    energy: Tensor
    magnetization: Tensor
    final_state: Tensor
    mean_state: Tensor
    acceptance: Tensor
    snapshots: Tensor | None
    mean_correlation: Tensor | None
    method: str
    sweeps: int
    burn_in: int
    measure_every: int
    extras: dict[str, Any] = field(default_factory=dict)


# -- von Mises–Fisher ------------------------------------------------------------------------


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


def _ising_site_update(
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


def _vector_site_update(
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


# -- colourings ------------------------------------------------------------------------------


def _axis_colours(size: int, periodic: bool) -> list[int]:
    colours = [i % 2 for i in range(size)]
    if periodic and size > 2 and size % 2 == 1:
        colours[-1] = 2
    return colours


def _lattice_colour_masks(lattice: SquareLattice, device: torch.device) -> Tensor:
    """(k, N) boolean masks of a proper colouring (k = 2 if bipartite, else 3)."""
    rows, cols = lattice.shape
    a = torch.tensor(_axis_colours(rows, lattice.periodic), device=device)
    b = torch.tensor(_axis_colours(cols, lattice.periodic), device=device)
    k = 3 if bool((a == 2).any() or (b == 2).any()) else 2
    colour = ((a[:, None] + b[None, :]) % k).reshape(-1)
    return torch.stack([colour == c for c in range(k)])


def _greedy_colour_classes(couplings: Tensor) -> list[Tensor]:
    """Index tensors of colour classes of the graph J_ij ≠ 0 (union over batch dims)."""
    n = couplings.shape[-1]
    adjacency = (couplings != 0).reshape(-1, n, n).any(dim=0).cpu()
    colours = torch.full((n,), -1, dtype=torch.long)
    for site in range(n):  # setup only: O(N^2) once per run
        used = colours[adjacency[site] & (colours >= 0)]
        taken = torch.zeros(n + 1, dtype=torch.bool)
        taken[used] = True
        colours[site] = int(torch.nonzero(~taken)[0])
    return [
        torch.nonzero(colours == c).squeeze(-1).to(couplings.device)
        for c in range(int(colours.max()) + 1)
    ]


# -- compact checkerboard for even periodic lattices ------------------------------------------


def _to_compact(grid: Tensor) -> tuple[Tensor, Tensor]:
    """(..., L, W) → black, white sublattices (..., L, W/2); black sites have (r + c) even."""
    *batch, rows, cols = grid.shape
    g = grid.reshape(*batch, rows // 2, 2, cols // 2, 2)
    black = torch.stack((g[..., :, 0, :, 0], g[..., :, 1, :, 1]), dim=-2)
    white = torch.stack((g[..., :, 0, :, 1], g[..., :, 1, :, 0]), dim=-2)
    return black.reshape(*batch, rows, cols // 2), white.reshape(*batch, rows, cols // 2)


def _from_compact(black: Tensor, white: Tensor) -> Tensor:
    *batch, rows, half = black.shape
    bb = black.reshape(*batch, rows // 2, 2, half)
    ww = white.reshape(*batch, rows // 2, 2, half)
    even = torch.stack((bb[..., :, 0, :], ww[..., :, 0, :]), dim=-1)
    odd = torch.stack((ww[..., :, 1, :], bb[..., :, 1, :]), dim=-1)
    return torch.stack((even, odd), dim=-3).reshape(*batch, rows, 2 * half)


def _compact_neighbours(other: Tensor, target_black: bool, even_rows: Tensor) -> Tensor:
    """Sum of the four neighbours (all on the other sublattice) of each target-sublattice site.

    A black site (r, k) sits at column 2k + (r mod 2); its neighbours are the other
    sublattice's (r ± 1, k), (r, k) and (r, k − 1) for even r, (r, k + 1) for odd r; for a white
    target the side neighbour is (r, k + 1) / (r, k − 1). One circular pad supplies all shifts.
    """
    *batch, rows, half = other.shape
    padded = torch.nn.functional.pad(
        other.reshape(-1, 1, rows, half), (1, 1, 1, 1), mode="circular"
    ).reshape(*batch, rows + 2, half + 2)
    left, right = padded[..., 1:-1, :-2], padded[..., 1:-1, 2:]
    side = (
        torch.where(even_rows, left, right) if target_black else torch.where(even_rows, right, left)
    )
    return padded[..., :-2, 1:-1] + padded[..., 2:, 1:-1] + other + side


# -- sweepers --------------------------------------------------------------------------------


class _Sweeper(ABC):
    """Holds the sampler state in its internal layout; ``sweep`` advances one sweep.

    ``measure`` returns (energy, mean spin) of the current state and ``accumulate`` adds it to
    the per-site running sum, both without leaving the internal layout.
    """

    def __init__(self, model: _SpinModel, state: Tensor) -> None:
        self.model = model
        self.state = state
        self.vector = isinstance(model, VectorSpinModel)
        self.site_sum = torch.zeros_like(state)
        self.keep = 1.0 - 2.0 ** -lazy_digits(model.num_spins)  # lazy Metropolis (module doc)

    @abstractmethod
    def sweep(self) -> Tensor:
        """Advance one sweep; return the accepted fraction per chain, (chains, *batch)."""

    def full_state(self) -> Tensor:
        return self.state

    def measure(self) -> tuple[Tensor, Tensor]:
        return self.model.energy(self.state), self.state.mean(dim=-2 if self.vector else -1)

    def accumulate(self) -> None:
        self.site_sum = self.site_sum + self.state

    def site_total(self) -> Tensor:
        return self.site_sum


class _CompactIsing(_Sweeper):
    def __init__(self, model: IsingModel, state: Tensor, method: str, generator: Any) -> None:
        super().__init__(model, state)
        lattice = model.lattice
        assert lattice is not None
        self.shape = lattice.shape
        self.method, self.generator = method, generator
        grid = state.reshape(*state.shape[:-1], *self.shape)
        self.black, self.white = _to_compact(grid)
        field = model.field.reshape(*model.field.shape[:-1], *self.shape)
        self.h_black, self.h_white = _to_compact(field)
        self.beta = model.beta[..., None, None]
        self.bond = model.bond[..., None, None]
        self.n = lattice.num_sites
        rows = torch.arange(self.shape[0], device=state.device)
        self.even_rows = (rows % 2 == 0)[:, None]
        self.sum_black = torch.zeros_like(self.black)
        self.sum_white = torch.zeros_like(self.white)
        self.local_white = self.h_white + self.bond * _compact_neighbours(
            self.black, False, self.even_rows
        )

    def sweep(self) -> Tensor:
        local = self.h_black + self.bond * _compact_neighbours(self.white, True, self.even_rows)
        self.black, flipped_b = _ising_site_update(
            self.black, local, self.beta, self.method, self.generator, self.keep
        )
        local = self.h_white + self.bond * _compact_neighbours(self.black, False, self.even_rows)
        self.white, flipped_w = _ising_site_update(
            self.white, local, self.beta, self.method, self.generator, self.keep
        )
        self.local_white = local
        count = flipped_b.sum((-1, -2)) + flipped_w.sum((-1, -2))
        return count.to(self.black.dtype) / self.n

    def measure(self) -> tuple[Tensor, Tensor]:
        # Every bond joins a white site to a black one, so with the white sites' local field
        # (computed from the current black sublattice) E = −Σ_w σ_w h^loc_w − Σ_b h_b σ_b.
        energy = -(self.white * self.local_white).sum((-1, -2)) - (self.h_black * self.black).sum(
            (-1, -2)
        )
        total = self.black.sum((-1, -2)) + self.white.sum((-1, -2))
        return energy, total / self.n

    def accumulate(self) -> None:
        self.sum_black = self.sum_black + self.black
        self.sum_white = self.sum_white + self.white

    def site_total(self) -> Tensor:
        grid = _from_compact(self.sum_black, self.sum_white)
        return grid.reshape(*grid.shape[:-2], self.n)

    def full_state(self) -> Tensor:
        grid = _from_compact(self.black, self.white)
        return grid.reshape(*grid.shape[:-2], self.n)


class _MaskedLattice(_Sweeper):
    """Any lattice, Ising or vector: update one colour class at a time through a site mask.

    The order of the classes is drawn afresh every sweep: with a fixed order, plain
    Metropolis's forced moves (ΔE ≤ 0 always accepted) made the three-colour sweep of a 3×3
    torus non-ergodic in practice (E off by 6 standard errors). Lazy Metropolis (module
    docstring) is irreducible in any order; the random order is kept, it costs nothing.
    """

    def __init__(self, model: _SpinModel, state: Tensor, method: str, generator: Any, step: Any):
        super().__init__(model, state)
        assert model.lattice is not None
        masks = _lattice_colour_masks(model.lattice, state.device)
        self.masks = [mask for mask in masks if bool(mask.any())]
        seed = torch.randint(0, 2**62, (), generator=generator, device=state.device)
        self.cpu_generator = torch.Generator().manual_seed(int(seed))
        self.method, self.generator, self.step = method, generator, step
        self.beta = model.beta[..., None]
        self.n = model.num_spins

    def sweep(self) -> Tensor:
        accepted = torch.zeros(
            self.state.shape[: -2 if self.vector else -1], device=self.state.device
        )
        order = torch.randperm(len(self.masks), generator=self.cpu_generator).tolist()
        for colour in order:  # a random class order per sweep (see the class docstring)
            mask = self.masks[colour]
            local = self.model.local_field(self.state)
            if self.vector:
                new, acc = _vector_site_update(
                    self.state, local, self.beta, self.model.radius, self.method, self.step,
                    self.generator,
                )  # fmt: skip
                self.state = torch.where(mask[:, None], new, self.state)
            else:
                new, acc = _ising_site_update(
                    self.state, local, self.beta, self.method, self.generator, self.keep
                )
                self.state = torch.where(mask, new, self.state)
            accepted = accepted + (acc & mask).sum(-1)
        return accepted.to(self.state.dtype) / self.n


class _DenseColoured(_Sweeper):
    """Dense couplings: colour classes of the coupling graph, each a vectorised update."""

    def __init__(self, model: _SpinModel, state: Tensor, method: str, generator: Any, step: Any):
        super().__init__(model, state)
        self.classes = _greedy_colour_classes(model.couplings)
        seed = torch.randint(0, 2**62, (), generator=generator, device=state.device)
        self.cpu_generator = torch.Generator().manual_seed(int(seed))
        self.method, self.generator, self.step = method, generator, step
        self.beta = model.beta[..., None]
        self.n = model.num_spins
        j = model.couplings
        self.columns = [j.index_select(-1, idx) for idx in self.classes]  # (*b, N, |c|)
        self.fields = [
            model.field.index_select(-2 if self.vector else -1, idx) for idx in self.classes
        ]

    def sweep(self) -> Tensor:
        s = self.state
        accepted = torch.zeros(s.shape[: -2 if self.vector else -1], device=s.device)
        order = torch.randperm(len(self.classes), generator=self.cpu_generator).tolist()
        for colour in order:  # a random class order per sweep (see _MaskedLattice)
            idx, columns, h = self.classes[colour], self.columns[colour], self.fields[colour]
            if self.vector:
                local = h + columns.transpose(-1, -2) @ s  # (C, *b, |c|, D)
                sites = s.index_select(-2, idx)
                new, acc = _vector_site_update(
                    sites, local, self.beta, self.model.radius, self.method, self.step,
                    self.generator,
                )  # fmt: skip
                s = s.index_copy(-2, idx, new)
            else:
                local = h + (s.unsqueeze(-2) @ columns).squeeze(-2)  # (C, *b, |c|)
                sites = s.index_select(-1, idx)
                new, acc = _ising_site_update(
                    sites, local, self.beta, self.method, self.generator, self.keep
                )
                s = s.index_copy(-1, idx, new)
            accepted = accepted + acc.sum(-1)
        self.state = s
        return accepted.to(s.dtype) / self.n


def _shift(x: Tensor, dim: int, step: int, periodic: bool) -> Tensor:
    """y[i] = x[i − step] along ``dim`` (step = ±1); zero/False beyond an open boundary."""
    if periodic:
        return torch.roll(x, step, dim)
    n = x.shape[dim]
    pad = torch.zeros_like(x.narrow(dim, 0, 1))
    if step == 1:
        return torch.cat([pad, x.narrow(dim, 0, n - 1)], dim)
    return torch.cat([x.narrow(dim, 1, n - 1), pad], dim)


class _Wolff(_Sweeper):
    """One Wolff cluster flip per chain per call, grown breadth-first for all chains at once."""

    def __init__(self, model: IsingModel, state: Tensor, generator: Any) -> None:
        super().__init__(model, state)
        self.generator = generator
        self.n = model.num_spins
        beta = model.beta
        if model.lattice is not None:
            self.p_add = (1.0 - torch.exp(-2.0 * beta * model.bond))[..., None, None]
        else:
            self.p_add = 1.0 - torch.exp(-2.0 * beta[..., None, None] * model.couplings)

    def _grow_lattice(self, cluster: Tensor, aligned: Tensor) -> Tensor:
        lattice = self.model.lattice
        assert lattice is not None
        frontier = cluster
        moves = [
            (a - 2, step) for a, size in enumerate(lattice.shape) if size > 1 for step in (1, -1)
        ]
        while True:
            bonds = torch.rand(
                (len(moves), *cluster.shape),
                dtype=self.p_add.dtype,
                device=cluster.device,
                generator=self.generator,
            )
            bonds = bonds < self.p_add
            reach = torch.zeros_like(cluster)
            for k, (dim, step) in enumerate(moves):  # each bond out of the frontier, tested once
                reach = reach | (_shift(frontier, dim, step, lattice.periodic) & bonds[k])
            new = reach & aligned & ~cluster
            cluster = cluster | new
            frontier = new
            if not bool(new.any()):  # one sync per growth step
                return cluster

    def _grow_dense(self, cluster: Tensor, aligned: Tensor) -> Tensor:
        frontier = cluster
        while True:
            shape = (*cluster.shape, cluster.shape[-1])
            bonds = (
                torch.rand(
                    shape, dtype=self.p_add.dtype, device=cluster.device, generator=self.generator
                )
                < self.p_add
            )
            reach = (frontier[..., :, None] & bonds).any(dim=-2)
            new = reach & aligned & ~cluster
            cluster = cluster | new
            frontier = new
            if not bool(new.any()):
                return cluster

    def sweep(self) -> Tensor:
        s = self.state
        seed = torch.randint(0, self.n, s.shape[:-1], device=s.device, generator=self.generator)
        seed_spin = s.gather(-1, seed[..., None])
        aligned = s == seed_spin
        cluster = torch.nn.functional.one_hot(seed, self.n).bool()
        lattice = self.model.lattice
        if lattice is not None:
            grid = (*s.shape[:-1], *lattice.shape)
            cluster = self._grow_lattice(cluster.reshape(grid), aligned.reshape(grid))
            cluster = cluster.reshape(s.shape)
        else:
            cluster = self._grow_dense(cluster, aligned)
        self.state = torch.where(cluster, -s, s)
        return cluster.sum(-1).to(s.dtype) / self.n


# -- public entry point ----------------------------------------------------------------------


def _initial_state(
    model: _SpinModel, chains: int, initial: Tensor | str, generator: torch.Generator | None
) -> Tensor:
    vector = isinstance(model, VectorSpinModel)
    site_shape = (model.num_spins, model.dim) if vector else (model.num_spins,)
    shape = (chains, *model.batch_shape, *site_shape)
    dtype, device = model.dtype, model.device
    if isinstance(initial, str):
        if initial == "random":
            if vector:
                g = torch.randn(shape, dtype=dtype, device=device, generator=generator)
                return model.radius * g / g.norm(dim=-1, keepdim=True)
            bits = torch.randint(0, 2, shape, device=device, generator=generator)
            return (2 * bits - 1).to(dtype)
        if initial == "up":
            if vector:
                state = torch.zeros(shape, dtype=dtype, device=device)
                state[..., 0] = model.radius
                return state
            return torch.ones(shape, dtype=dtype, device=device)
        raise ValueError(f"initial must be 'random', 'up' or a tensor of spins, got {initial!r}")
    if not isinstance(initial, Tensor):
        raise ValueError(
            f"initial must be 'random', 'up' or a tensor, got {type(initial).__name__}"
        )
    state = initial.to(dtype=dtype, device=device)
    if tuple(state.shape[-len(site_shape) :]) != site_shape:
        what = "(..., N, D) with D = model.dim" if vector else "(..., N)"
        raise ValueError(
            f"initial must have site shape {site_shape} {what}, got {tuple(state.shape)}"
        )
    try:
        state = state.expand(shape).clone()
    except RuntimeError as err:
        raise ValueError(
            f"initial must broadcast to (chains, *batch, ...) = {shape}, got {tuple(state.shape)}"
        ) from err
    if vector:
        if not bool(((state.norm(dim=-1) - model.radius).abs() <= 1e-5 * model.radius).all()):
            raise ValueError(f"initial vector spins must have norm radius={model.radius}")
    elif not bool(((state == 1) | (state == -1)).all()):
        raise ValueError("initial Ising spins must be +1 or -1")
    return state


def _sample_cost(
    model: _SpinModel,
    chains: int,
    total_sweeps: int,
    records: int,
    method: str,
    correlations: bool,
    snapshot_every: int | None,
    engine: str,
) -> float:
    """Check the estimated memory of a run against the limit; return its operations.

    Live memory is about ten state-sized tensors (state, proposals, uniforms, local fields,
    running sums; the multi-spin engine's per-site counters are as large), the recorded
    series, snapshots, ⟨σσᵀ⟩ when asked, and Wolff's bond draws on dense couplings (N per site).
    """
    vector = isinstance(model, VectorSpinModel)
    batch = max(1, model.batch_shape.numel())
    site = model.num_spins * (model.dim if vector else 1)  # type: ignore[attr-defined]
    element = torch.empty((), dtype=model.dtype).element_size()
    state = float(chains) * batch * site * element
    memory = (
        10 * state + records * float(chains) * batch * (1 + (model.dim if vector else 1)) * element
    )  # type: ignore[attr-defined]
    if correlations:
        memory += 3.0 * batch * site * site * element + state
    if snapshot_every is not None:
        memory += (records // snapshot_every) * state
    if method == "wolff" and model.lattice is None:
        memory += 2 * state * model.num_spins
    elif model.lattice is None:
        memory += 2.0 * batch * model.num_spins**2 * element
    check_memory(
        memory,
        f"sample() with chains={chains} of {model.num_spins} sites (batch {batch}, "
        f"{records} measurements{', correlations' if correlations else ''})",
        "fewer chains per call (independent runs pool), a larger measure_every, "
        "correlations=False or fewer snapshots",
    )
    per_update = (40 if vector else 12) + (model.num_spins if model.lattice is None else 0)
    return float(chains) * batch * site * total_sweeps * per_update


def _make_sweeper(
    model: _SpinModel, state: Tensor, method: str, generator: Any, step_size: float | None
) -> _Sweeper:
    vector = isinstance(model, VectorSpinModel)
    lattice = model.lattice
    if method == "wolff":
        if vector:
            raise ValueError("method='wolff' is implemented for Ising models only")
        if bool((model.field != 0).any()):
            raise ValueError("method='wolff' needs zero field (h = 0)")
        strength = model.bond if lattice is not None else model.couplings
        if bool((strength < 0).any()):
            raise ValueError("method='wolff' needs ferromagnetic couplings (J_ij >= 0)")
        return _Wolff(model, state, generator)
    if lattice is not None:
        rows, cols = lattice.shape
        if not vector and lattice.periodic and rows % 2 == 0 and cols % 2 == 0:
            return _CompactIsing(model, state, method, generator)  # type: ignore[arg-type]
        return _MaskedLattice(model, state, method, generator, step_size)
    return _DenseColoured(model, state, method, generator, step_size)


def sample(
    model: IsingModel | VectorSpinModel,
    sweeps: int,
    burn_in: int | None = None,
    chains: int = 1,
    method: str = "metropolis",
    generator: torch.Generator | None = None,
    initial: Tensor | str = "random",
    measure_every: int = 1,
    snapshot_every: int | None = None,
    correlations: bool = False,
    step_size: float | None = None,
    progress: bool | None = None,
    engine: str = "tensor",
) -> MonteCarloSamples:
    """Run ``chains`` independent Markov chains of ``model`` and record energy and magnetization.

    Args:
        model: an :class:`IsingModel` or :class:`VectorSpinModel` (dense or lattice, batched).
        sweeps: recorded sweeps after burn-in (> 0); one Wolff sweep is one cluster flip.
        burn_in: discarded sweeps first (default ``sweeps // 5``).
        chains: independent chains, run as one batched tensor program (leading dim).
        method: ``"metropolis"``, ``"heat_bath"`` or ``"wolff"`` (Ising, J ≥ 0, h = 0).
        generator: torch generator on the model's device (reproducible runs).
        initial: ``"random"`` (hot start), ``"up"`` (all spins +1 / along e₁) or spins
            broadcastable to ``(chains, *batch, N[, D])``.
        measure_every: sweeps between recorded measurements.
        snapshot_every: keep the state every this many measurements.
        correlations: also accumulate ⟨σ_i σ_j⟩ (dense N×N per batch entry).
        step_size: vector Metropolis: Gaussian kick size (``None``: uniform proposals).
        progress: show a progress bar (``None``: only when the estimated work is long).
        engine: ``"tensor"`` (every model and method) or ``"multispin"``: Metropolis for an
            Ising model on a periodic even-sided square lattice at zero field (uniform bond of
            either sign), 64 chains per int64 word (:mod:`spinformer.physics.multispin`); pick
            ``chains`` a multiple of 64. Its ``acceptance`` is estimated on the sweeps that
            precede measurements. On the CPU its sweeps run in a fused native kernel (built
            once with the system C compiler and cached; ``SPINFORMER_NATIVE=0`` or no
            compiler: the same algorithm as torch operations, which is also the CUDA path).
    """
    if not isinstance(model, IsingModel | VectorSpinModel):
        raise ValueError(
            f"model must be an IsingModel or VectorSpinModel, got {type(model).__name__}"
        )
    if isinstance(model.lattice, CompleteGraph):
        raise ValueError(
            f"Monte Carlo of a complete-graph model ({model.num_spins} spins kept without a dense "
            "coupling matrix) is not available; use method='mean_field' or 'tap', or dense "
            "couplings (model.coupling_matrix)"
        )
    if isinstance(sweeps, bool) or not isinstance(sweeps, int) or sweeps <= 0:
        raise ValueError(f"sweeps must be a positive integer, got {sweeps!r}")
    burn_in = sweeps // 5 if burn_in is None else burn_in
    if isinstance(burn_in, bool) or not isinstance(burn_in, int) or burn_in < 0:
        raise ValueError(f"burn_in must be a non-negative integer, got {burn_in!r}")
    check_positive_int(chains, "chains")
    check_positive_int(measure_every, "measure_every")
    if snapshot_every is not None:
        check_positive_int(snapshot_every, "snapshot_every")
    if method not in ALGORITHMS:
        raise ValueError(f"method must be one of {ALGORITHMS}, got {method!r}")
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "multispin":
        need = "method='metropolis'" if method != "metropolis" else None
        if need is None:
            need = (
                "an IsingModel" if not isinstance(model, IsingModel) else multispin_supported(model)
            )
        if need is not None:
            raise ValueError(f"engine='multispin' needs {need}")
    if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a positive number or None, got {step_size!r}")
    vector = isinstance(model, VectorSpinModel)
    if vector and model.dim < 2:
        raise ValueError(f"vector models need spin dimension dim >= 2, got {model.dim}")
    if model.lattice is None:  # equilibrium samplers need an energy: J symmetric
        j = model.couplings
        if not torch.allclose(j, j.transpose(-1, -2)):
            raise ValueError("couplings must be symmetric for an equilibrium sampler")

    records = sweeps // measure_every
    if records == 0:
        raise ValueError(f"sweeps ({sweeps}) must be at least measure_every ({measure_every})")
    operations = _sample_cost(
        model, chains, sweeps + burn_in, records, method, correlations, snapshot_every, engine
    )
    progress = show_progress(progress, operations)
    if engine == "multispin" and initial in ("random", "up"):  # drawn as packed words
        sweeper: Any = MultispinIsing(model, initial, generator, chains)  # type: ignore[arg-type]
    else:
        state = _initial_state(model, chains, initial, generator)
        if engine == "multispin":
            sweeper = MultispinIsing(model, state, generator)  # type: ignore[arg-type]
        else:
            sweeper = _make_sweeper(model, state, method, generator, step_size)
    batch = (chains, *model.batch_shape)
    dtype, device = model.dtype, model.device
    energy = torch.empty(records, *batch, dtype=dtype, device=device)
    mag_shape = (records, *batch, model.dim) if vector else (records, *batch)
    magnetization = torch.empty(mag_shape, dtype=dtype, device=device)
    correlation_sum = None
    snapshots: list[Tensor] = []
    accepted = torch.zeros(batch, dtype=dtype, device=device)
    steps: Any = range(burn_in + sweeps)
    if progress:
        from rich.progress import track

        steps = track(steps, description=f"{method}: {chains} chains")
    for step in steps:
        done = step - burn_in + 1
        measuring = done > 0 and done % measure_every == 0
        if engine == "multispin":  # the sweeps up to a measurement (or the end) run as one call
            fraction = None
            if step == burn_in - 1:
                sweeper.sweep(record=False, count=burn_in)
            elif measuring:  # flip masks are kept for the acceptance estimate
                sweeper.sweep(record=True, count=measure_every)
            elif done == sweeps:  # the sweeps after the last measurement
                sweeper.sweep(record=False, count=sweeps % measure_every)
        else:
            fraction = sweeper.sweep()
        if step < burn_in:
            continue
        if fraction is not None:  # the multispin engine estimates it when measuring
            accepted = accepted + fraction
        if not measuring:
            continue
        t = done // measure_every - 1
        energy[t], magnetization[t] = sweeper.measure()
        sweeper.accumulate()
        if correlations or snapshot_every is not None:
            current = sweeper.full_state()
            if correlations:
                flat = current.reshape(*batch, -1)
                outer = torch.einsum("c...i,c...j->...ij", flat, flat)
                correlation_sum = outer if correlation_sum is None else correlation_sum + outer
            if snapshot_every is not None and (t + 1) % snapshot_every == 0:
                snapshots.append(current.clone())
    final = sweeper.full_state()
    mean_correlation = None
    if correlation_sum is not None:
        mean_correlation = correlation_sum / (records * chains)
        if vector:
            n, d = model.num_spins, model.dim
            mean_correlation = mean_correlation.reshape(*model.batch_shape, n, d, n, d)
    return MonteCarloSamples(
        energy=energy,
        magnetization=magnetization,
        final_state=final,
        mean_state=sweeper.site_total() / records,
        acceptance=sweeper.acceptance() if engine == "multispin" else accepted / sweeps,
        snapshots=torch.stack(snapshots) if snapshots else None,
        mean_correlation=mean_correlation,
        method=method,
        sweeps=sweeps,
        burn_in=burn_in,
        measure_every=measure_every,
    )


# -- thermodynamics("monte_carlo") ------------------------------------------------------------


def _squared_norm(magnetization: Tensor, scalar_ndim: int) -> Tensor:
    """m² of the mean spin: m² (Ising) or |m|² (vector, extra last dim)."""
    if magnetization.ndim == scalar_ndim + 1:
        return (magnetization**2).sum(-1)
    return magnetization**2


@register_method("monte_carlo", IsingModel, VectorSpinModel)
def monte_carlo_thermodynamics(
    model: _SpinModel,
    sweeps: int = 2000,
    burn_in: int | None = None,
    chains: int = 16,
    algorithm: str = "metropolis",
    generator: torch.Generator | None = None,
    initial: Tensor | str = "random",
    susceptibility: bool = False,
    integration_points: int = 0,
    step_size: float | None = None,
    progress: bool | None = None,
    engine: str = "tensor",
) -> Thermodynamics:
    r"""Thermodynamics estimated by Monte Carlo, with standard errors and autocorrelation times.

    U = ⟨E⟩, C = β² Var(E), m_i = ⟨σ_i⟩ and (``susceptibility=True``) χ_ij = β Cov(σ_i, σ_j) are
    averages over ``chains`` × ``sweeps`` samples of :func:`sample` (``algorithm`` is its
    ``method``). ``stderr`` holds √(2τ_int Var/n) for U, for C (from the series (E − Ū)²), for
    m_i (with the mean spin's τ_int; the chain-to-chain scatter of the site means when that is
    larger) and for ⟨m²⟩ and ⟨|m|⟩ of the mean spin m = Σσ_i/N, whose values are in ``extras``
    (``"magnetization_squared"``, ``"abs_magnetization"``). ``extras["autocorrelation_time"]``
    maps observable → τ_int in sweeps (cluster flips for Wolff); ``extras["samples"]`` is the
    :class:`MonteCarloSamples` record.

    ln Z, F and S are not sampled directly. With ``integration_points`` K > 0 they come from
    thermodynamic integration, ln Z(β) = ln Z(0) − ∫₀^β U(β') dβ', on K Gauss–Legendre nodes
    (one batched run of K models); ln Z(0) = N ln 2 for Ising spins and 0 for vector spins (the
    uniform probability measure). Otherwise they are NaN.

    ``engine="multispin"`` runs the multi-spin coded Metropolis of :func:`sample` (periodic
    even lattices at zero field), for the thermodynamic integration too.

    ``converged`` is Sokal's run-length criterion, T ≥ 50 τ_int for E and m², per batch entry.
    """
    check_positive_int(chains, "chains")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
    if (
        isinstance(integration_points, bool)
        or not isinstance(integration_points, int)
        or integration_points < 0
    ):
        raise ValueError(
            f"integration_points must be a non-negative integer, got {integration_points!r}"
        )
    samples = sample(
        model,  # type: ignore[arg-type]
        sweeps,
        burn_in=burn_in,
        chains=chains,
        method=algorithm,
        generator=generator,
        initial=initial,
        correlations=susceptibility,
        step_size=step_size,
        progress=progress,
        engine=engine,
    )
    vector = isinstance(model, VectorSpinModel)
    beta = model.expanded_beta()
    scalar_ndim = samples.energy.ndim
    energy = estimate_mean(samples.energy)
    variance = estimate_mean((samples.energy - energy.mean) ** 2)
    m2_series = _squared_norm(samples.magnetization, scalar_ndim)
    m2 = estimate_mean(m2_series)
    abs_m = estimate_mean(m2_series.sqrt())
    m_tau = integrated_autocorrelation_time(samples.magnetization)
    if vector:
        m_tau = m_tau.amax(dim=-1)

    magnetization = samples.mean_state.mean(dim=0)
    count = samples.energy.shape[0] * chains
    if vector:
        site_var = model.radius**2 - (magnetization**2).sum(-1, keepdim=True)  # type: ignore[attr-defined]
    else:
        site_var = 1.0 - magnetization**2
    tau_sites = m_tau.reshape(*m_tau.shape, *([1] * (magnetization.ndim - m_tau.ndim)))
    m_stderr = (2.0 * tau_sites * site_var.clamp_min(0.0) / count).sqrt()
    if chains > 1:
        m_stderr = torch.maximum(m_stderr, (samples.mean_state.var(dim=0) / chains).sqrt())

    chi = None
    if susceptibility:
        assert samples.mean_correlation is not None
        flat_m = magnetization.reshape(*beta.shape, -1)
        cov = samples.mean_correlation.reshape(*flat_m.shape, flat_m.shape[-1])
        cov = cov - flat_m[..., :, None] * flat_m[..., None, :]
        chi = (beta[..., None, None] * cov).reshape(samples.mean_correlation.shape)

    stderr = {
        "energy": energy.stderr,
        "heat_capacity": beta**2 * variance.stderr,
        "magnetization": m_stderr,
        "magnetization_squared": m2.stderr,
        "abs_magnetization": abs_m.stderr,
    }
    nan = torch.full_like(energy.mean, math.nan)
    log_z, free_energy, entropy = nan, nan, nan
    if integration_points:
        log_z, log_z_err = _integrate_log_partition(
            model, integration_points, sweeps, burn_in, chains, algorithm, generator, initial,
            step_size, engine,
        )  # fmt: skip
        free_energy = -log_z / beta
        entropy = beta * energy.mean + log_z
        stderr["log_partition"] = log_z_err
        stderr["free_energy"] = log_z_err / beta
        stderr["entropy"] = (beta**2 * energy.stderr**2 + log_z_err**2).sqrt()
    extras: dict[str, Any] = {
        "route": algorithm,
        "chains": chains,
        "sweeps": sweeps,
        "burn_in": samples.burn_in,
        "acceptance": samples.acceptance.mean(dim=0),
        "magnetization_squared": m2.mean,
        "abs_magnetization": abs_m.mean,
        "autocorrelation_time": {
            "energy": energy.autocorrelation_time,
            "magnetization": m_tau,
            "magnetization_squared": m2.autocorrelation_time,
            "heat_capacity": variance.autocorrelation_time,
        },
        "samples": samples,
    }
    longest = torch.maximum(energy.autocorrelation_time, m2.autocorrelation_time)
    return Thermodynamics(
        log_partition=log_z,
        free_energy=free_energy,
        energy=energy.mean,
        entropy=entropy,
        heat_capacity=beta**2 * variance.mean,
        magnetization=magnetization,
        susceptibility=chi,
        beta=beta,
        method="monte_carlo",
        converged=samples.energy.shape[0] >= 50.0 * longest,
        iterations=torch.full_like(energy.mean, float(sweeps)),
        stderr=stderr,
        extras=extras,
    )


def _integrate_log_partition(
    model: _SpinModel,
    points: int,
    sweeps: int,
    burn_in: int | None,
    chains: int,
    algorithm: str,
    generator: torch.Generator | None,
    initial: Tensor | str,
    step_size: float | None,
    engine: str = "tensor",
) -> tuple[Tensor, Tensor]:
    """ln Z(β) = ln Z(0) − β ∫₀¹ U(sβ) ds by Gauss–Legendre on ``points`` nodes, with its se."""
    import numpy as np

    nodes, weights = np.polynomial.legendre.leggauss(points)
    dtype, device = model.dtype, model.device
    s = torch.tensor((nodes + 1.0) / 2.0, dtype=dtype, device=device)
    w = torch.tensor(weights / 2.0, dtype=dtype, device=device)
    beta = model.expanded_beta()
    node_shape = (points, *([1] * beta.ndim))
    betas = s.reshape(node_shape) * beta  # (K, *batch)
    node_model = model.with_beta(betas)  # (K, *batch): one batched run over the nodes
    run = sample(
        node_model,  # type: ignore[arg-type]
        sweeps,
        burn_in=burn_in,
        chains=chains,
        method=algorithm,
        generator=generator,
        initial=initial,
        step_size=step_size,
        engine=engine,
    )
    est = estimate_mean(run.energy)  # (K, *batch)
    w_b = w.reshape(node_shape)
    integral = (w_b * est.mean).sum(0)
    integral_err = ((w_b * est.stderr) ** 2).sum(0).sqrt()
    log_z0 = 0.0 if isinstance(model, VectorSpinModel) else model.num_spins * math.log(2.0)
    return log_z0 - beta * integral, beta * integral_err


def autocorrelation_times(samples: MonteCarloSamples) -> dict[str, Tensor]:
    """τ_int of the energy and of m² for a run (in recorded measurements)."""
    m2 = _squared_norm(samples.magnetization, samples.energy.ndim)
    return {
        "energy": integrated_autocorrelation_time(samples.energy),
        "magnetization_squared": integrated_autocorrelation_time(m2),
    }
