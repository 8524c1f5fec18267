r"""The sweeper protocol, and the tensor engine's sweepers (every model and algorithm).

A sweeper holds the state of all chains in its own layout and advances it sweep by sweep; the
sampling loop of :func:`spinformer.physics.montecarlo.sample` only talks to it through
:class:`Sweeper`, so an engine (tensor operations, the multi-spin coded kernel, the compiled
checkerboard) is a sweeper factory. The tensor engine's sweepers update one colour class
(:mod:`spinformer.physics.montecarlo.colourings`) per vectorised step for all chains and batch
entries at once, or grow Wolff clusters (Phys. Rev. Lett. 62, 361, 1989): for ferromagnetic
couplings at zero field, a cluster grows from a random seed through aligned neighbours, each
bond tested once with :math:`p_{ij} = 1 - e^{-2\beta J_{ij}}`, and is flipped.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from spinformer.physics.models import IsingModel, VectorSpinModel, _SpinModel
from spinformer.physics.montecarlo.colourings import (
    compact_neighbours,
    from_compact,
    greedy_colour_classes,
    lattice_colour_masks,
    to_compact,
)
from spinformer.physics.montecarlo.updates import (
    ising_site_update,
    lazy_digits,
    vector_site_update,
)

__all__ = ["Sweeper", "TensorSweeper", "tensor_sweeper"]


@runtime_checkable
class Sweeper(Protocol):
    """What the sampling loop needs from an engine's sampler state.

    ``sweep(count, record)`` advances ``count`` sweeps (``record``: they follow the burn-in and
    count towards :meth:`acceptance`); ``measure`` returns (energy, mean spin) of the current
    state, ``(chains, *batch)`` and ``(chains, *batch[, D])``; ``accumulate`` adds the state to
    per-site running sums, whose mean ``site_mean(measurements)`` returns,
    ``(chains, *batch, N[, D])``;
    ``full_state`` is the state as spins; ``acceptance`` the mean accepted fraction per chain.
    A sweeper may also have ``run(records, every, energy, magnetization)``: ``records`` times
    ``sweep(every, True)``, ``measure`` into row t of ``energy`` and ``magnetization`` and
    ``accumulate``, in one call (the sampling loop uses it when it keeps nothing else).
    """

    def sweep(self, count: int, record: bool) -> None: ...

    def measure(self) -> tuple[Tensor, Tensor]: ...

    def accumulate(self) -> None: ...

    def site_mean(self, measurements: int) -> Tensor: ...

    def full_state(self) -> Tensor: ...

    def acceptance(self) -> Tensor: ...


class TensorSweeper(ABC):
    """A sweeper whose state is one tensor of spins; subclasses implement one sweep."""

    def __init__(self, model: _SpinModel, state: Tensor) -> None:
        self.model = model
        self.state = state
        self.vector = isinstance(model, VectorSpinModel)
        self.site_sum = torch.zeros_like(state)
        self.keep = 1.0 - 2.0 ** -lazy_digits(model.num_spins)  # lazy Metropolis
        chains_shape = state.shape[: -2 if self.vector else -1]
        self.accepted = torch.zeros(chains_shape, dtype=state.dtype, device=state.device)
        self.recorded = 0

    @abstractmethod
    def sweep_once(self) -> Tensor:
        """Advance one sweep; return the accepted fraction per chain, (chains, *batch)."""

    def sweep(self, count: int, record: bool) -> None:
        for _ in range(count):
            fraction = self.sweep_once()
            if record:
                self.accepted = self.accepted + fraction
                self.recorded += 1

    def acceptance(self) -> Tensor:
        return self.accepted / max(self.recorded, 1)

    def full_state(self) -> Tensor:
        return self.state

    def measure(self) -> tuple[Tensor, Tensor]:
        return self.model.energy(self.state), self.state.mean(dim=-2 if self.vector else -1)

    def accumulate(self) -> None:
        self.site_sum = self.site_sum + self.state

    def site_mean(self, measurements: int) -> Tensor:
        return self.site_sum / measurements


class _CompactIsing(TensorSweeper):
    def __init__(self, model: IsingModel, state: Tensor, method: str, generator: Any) -> None:
        super().__init__(model, state)
        lattice = model.lattice
        assert lattice is not None
        self.shape = lattice.shape
        self.method, self.generator = method, generator
        grid = state.reshape(*state.shape[:-1], *self.shape)
        self.black, self.white = to_compact(grid)
        field = model.field.reshape(*model.field.shape[:-1], *self.shape)
        self.h_black, self.h_white = to_compact(field)
        self.beta = model.beta[..., None, None]
        self.bond = model.bond[..., None, None]
        self.n = lattice.num_sites
        rows = torch.arange(self.shape[0], device=state.device)
        self.even_rows = (rows % 2 == 0)[:, None]
        self.sum_black = torch.zeros_like(self.black)
        self.sum_white = torch.zeros_like(self.white)
        self.local_white = self.h_white + self.bond * compact_neighbours(
            self.black, False, self.even_rows
        )

    def sweep_once(self) -> Tensor:
        local = self.h_black + self.bond * compact_neighbours(self.white, True, self.even_rows)
        self.black, flipped_b = ising_site_update(
            self.black, local, self.beta, self.method, self.generator, self.keep
        )
        local = self.h_white + self.bond * compact_neighbours(self.black, False, self.even_rows)
        self.white, flipped_w = ising_site_update(
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

    def site_mean(self, measurements: int) -> Tensor:
        grid = from_compact(self.sum_black, self.sum_white)
        return grid.reshape(*grid.shape[:-2], self.n) / measurements

    def full_state(self) -> Tensor:
        grid = from_compact(self.black, self.white)
        return grid.reshape(*grid.shape[:-2], self.n)


class _MaskedLattice(TensorSweeper):
    """Any lattice, Ising or vector: update one colour class at a time through a site mask.

    The order of the classes is drawn afresh every sweep: with a fixed order, plain
    Metropolis's forced moves (ΔE ≤ 0 always accepted) made the three-colour sweep of a 3×3
    torus non-ergodic in practice (E off by 6 standard errors). Lazy Metropolis (module
    docstring) is irreducible in any order; the random order is kept, it costs nothing.
    """

    def __init__(self, model: _SpinModel, state: Tensor, method: str, generator: Any, step: Any):
        super().__init__(model, state)
        assert model.lattice is not None
        masks = lattice_colour_masks(model.lattice, state.device)
        self.masks = [mask for mask in masks if bool(mask.any())]
        seed = torch.randint(0, 2**62, (), generator=generator, device=state.device)
        self.cpu_generator = torch.Generator().manual_seed(int(seed))
        self.method, self.generator, self.step = method, generator, step
        self.beta = model.beta[..., None]
        self.n = model.num_spins

    def sweep_once(self) -> Tensor:
        accepted = torch.zeros(
            self.state.shape[: -2 if self.vector else -1], device=self.state.device
        )
        order = torch.randperm(len(self.masks), generator=self.cpu_generator).tolist()
        for colour in order:  # a random class order per sweep (see the class docstring)
            mask = self.masks[colour]
            local = self.model.local_field(self.state)
            if self.vector:
                new, acc = vector_site_update(
                    self.state, local, self.beta, self.model.radius, self.method, self.step,
                    self.generator,
                )  # fmt: skip
                self.state = torch.where(mask[:, None], new, self.state)
            else:
                new, acc = ising_site_update(
                    self.state, local, self.beta, self.method, self.generator, self.keep
                )
                self.state = torch.where(mask, new, self.state)
            accepted = accepted + (acc & mask).sum(-1)
        return accepted.to(self.state.dtype) / self.n


class _DenseColoured(TensorSweeper):
    """Dense couplings: colour classes of the coupling graph, each a vectorised update."""

    def __init__(self, model: _SpinModel, state: Tensor, method: str, generator: Any, step: Any):
        super().__init__(model, state)
        self.classes = greedy_colour_classes(model.couplings)
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

    def sweep_once(self) -> Tensor:
        s = self.state
        accepted = torch.zeros(s.shape[: -2 if self.vector else -1], device=s.device)
        order = torch.randperm(len(self.classes), generator=self.cpu_generator).tolist()
        for colour in order:  # a random class order per sweep (see _MaskedLattice)
            idx, columns, h = self.classes[colour], self.columns[colour], self.fields[colour]
            if self.vector:
                local = h + columns.transpose(-1, -2) @ s  # (C, *b, |c|, D)
                sites = s.index_select(-2, idx)
                new, acc = vector_site_update(
                    sites, local, self.beta, self.model.radius, self.method, self.step,
                    self.generator,
                )  # fmt: skip
                s = s.index_copy(-2, idx, new)
            else:
                local = h + (s.unsqueeze(-2) @ columns).squeeze(-2)  # (C, *b, |c|)
                sites = s.index_select(-1, idx)
                new, acc = ising_site_update(
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


class _Wolff(TensorSweeper):
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

    def sweep_once(self) -> Tensor:
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


def tensor_sweeper(
    model: _SpinModel, state: Tensor, algorithm: str, generator: Any, step_size: float | None
) -> TensorSweeper:
    """The tensor engine's sweeper for ``model`` and ``algorithm`` (any model, any device)."""
    vector = isinstance(model, VectorSpinModel)
    lattice = model.lattice
    if algorithm == "wolff":
        return _Wolff(model, state, generator)  # type: ignore[arg-type]
    if lattice is not None:
        rows, cols = lattice.shape
        if not vector and lattice.periodic and rows % 2 == 0 and cols % 2 == 0:
            return _CompactIsing(model, state, algorithm, generator)  # type: ignore[arg-type]
        return _MaskedLattice(model, state, algorithm, generator, step_size)
    return _DenseColoured(model, state, algorithm, generator, step_size)
