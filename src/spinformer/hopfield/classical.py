r"""The classical Hopfield network: ±1 spins, Hebb couplings, attractors as memories.

Patterns :math:`\xi^\mu \in \{\pm1\}^N`, :math:`\mu = 1\ldots P`, are stored in the Hebb couplings
(Hopfield 1982) :math:`J_{ij} = N^{-1}\sum_\mu \xi^\mu_i\xi^\mu_j`, :math:`J_{ii} = 0`, and the network
is the Ising model :math:`E(s) = -\tfrac12 s^\top J s` of :mod:`spinformer.physics`. Zero-temperature
asynchronous dynamics :math:`s_i \leftarrow \operatorname{sign}(h_i)`, :math:`h_i = \sum_j J_{ij}s_j`,
never raise E (a flip changes it by :math:`-2|h_i| \le 0` because :math:`J_{ii} = 0`), so every run
ends in a fixed point: an *attractor* (Hopfield, "Neural networks and physical systems with
emergent collective computational abilities", 1982): a corrupted pattern in a basin of
attraction flows to the stored one. At temperature T > 0 the same sweep is Glauber dynamics,
:math:`P(s_i = +1) = 1/(1 + e^{-2h_i/T})`, which samples :math:`e^{-E/T}`.
Synchronous updates (all spins at once) may end in 2-cycles instead.

Besides the stored patterns the energy has spurious minima: the symmetric odd mixtures
:math:`\operatorname{sign}(\xi^1 + \xi^2 + \xi^3)` (overlap ½ with each of the three,
E[ξ¹ sign(ξ¹+ξ²+ξ³)] = ½) and, at large load, spin-glass states. Amit, Gutfreund and Sompolinsky
(Phys. Rev. Lett. 55, 1530, 1985) showed that retrieval collapses at the load
:math:`\alpha = P/N \approx 0.138`.

The overlap :math:`m_\mu = \xi^\mu\cdot s / N` is the order parameter; ``run`` is vectorised over any
number of starting states (batch dims), with a sequential loop over sites only (asynchronous
dynamics is sequential by definition).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from spinformer._shapes import AxisLength
from spinformer._validation import as_tensor, check_positive_int
from spinformer.physics import IsingModel, hopfield_couplings

__all__ = [
    "SCHEDULES",
    "AttractorCensus",
    "BasinEstimate",
    "ClassicalHopfield",
    "HopfieldRun",
    "random_patterns",
]

SCHEDULES = ("async", "sync")
_TIE = 1e-9


def random_patterns(
    num_patterns: int,
    num_spins: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Unbiased random ±1 patterns, shape (P, N)."""
    check_positive_int(num_patterns, "num_patterns")
    check_positive_int(num_spins, "num_spins")
    bits = torch.randint(0, 2, (num_patterns, num_spins), generator=generator)
    return (2 * bits - 1).to(dtype)


@dataclass(frozen=True)
class HopfieldRun:
    """Result of :meth:`ClassicalHopfield.run`.

    Attributes:
        state: final states (..., N).
        converged: (...) True where a full sweep changed no spin (a fixed point).
        sweeps: (...) sweeps until convergence (the number run, if not converged).
        energy_trace: (..., S + 1) energy before the first and after every sweep.
        overlaps: (..., P) final overlaps m_μ = ξ^μ·s/N.
    """

    state: Tensor
    converged: Tensor
    sweeps: Tensor
    energy_trace: Tensor
    overlaps: Tensor


@dataclass(frozen=True)
class BasinEstimate:
    """Fraction of corrupted starts that return to their pattern, per corruption level."""

    corruption: Tensor
    fraction_returned: Tensor
    stderr: Tensor
    final_overlap: Tensor
    trials: int


@dataclass(frozen=True)
class AttractorCensus:
    """Distinct attractors reached from random starts (identified up to a global sign).

    ``kinds`` labels each: ``"pattern"`` (|m_μ| ≥ 0.9 for a stored pattern), ``"mixture"`` (the
    state agrees to ≥ 0.9 overlap with the symmetric odd mixture sign(Σ_μ sign(m_μ) ξ^μ) of
    its 3 or 5 largest overlaps) or ``"spurious"`` (anything else: spin-glass states).
    """

    states: Tensor
    counts: Tensor
    overlaps: Tensor
    energies: Tensor
    kinds: tuple[str, ...]


class ClassicalHopfield:
    """Hopfield network with Hebb couplings (zero diagonal) storing ±1 ``patterns`` (P, N)."""

    num_patterns = AxisLength("patterns", 0, "P, the number of stored patterns.")
    num_spins = AxisLength("patterns", 1, "N, the number of spins.")

    def __init__(self, patterns: Tensor) -> None:
        patterns = as_tensor(patterns, "patterns")
        if patterns.ndim != 2 or patterns.shape[0] == 0 or patterns.shape[1] < 2:
            raise ValueError(
                f"patterns must have shape (P, N) with P >= 1 and N >= 2, got {tuple(patterns.shape)}"
            )
        if not bool(((patterns == 1) | (patterns == -1)).all()):
            raise ValueError("patterns must contain only +1 and -1 entries (classical Hopfield)")
        self.patterns = patterns
        self.couplings = hopfield_couplings(patterns)

    @property
    def load(self) -> float:
        """α = P/N."""
        return self.num_patterns / self.num_spins

    def _check_states(self, states: Tensor, name: str = "s") -> Tensor:
        states = as_tensor(states, name, dtype=self.patterns.dtype, device=self.patterns.device)
        if states.ndim < 1 or states.shape[-1] != self.num_spins:
            raise ValueError(
                f"{name} must have shape (..., {self.num_spins}), got {tuple(states.shape)}"
            )
        if not bool(((states == 1) | (states == -1)).all()):
            raise ValueError(f"{name} must contain only +1 and -1 entries")
        return states

    def ising_model(self, beta: Tensor | float = 1.0) -> IsingModel:
        """The network as an :class:`IsingModel` at inverse temperature β (for Monte Carlo)."""
        return IsingModel(self.couplings, beta=beta)

    def energy(self, s: Tensor) -> Tensor:
        """E(s) = −½ sᵀJs for states (..., N)."""
        s = self._check_states(s)
        return -0.5 * torch.einsum("...n,nm,...m->...", s, self.couplings, s)

    def overlaps(self, s: Tensor) -> Tensor:
        """m_μ = ξ^μ·s / N for states (..., N); returns (..., P)."""
        s = self._check_states(s)
        return s @ self.patterns.T / self.num_spins

    def mixture_state(
        self, indices: list[int] | tuple[int, ...], signs: Tensor | None = None
    ) -> Tensor:
        """The symmetric mixture sign(Σ_μ ε_μ ξ^μ) of an odd number of stored patterns."""
        idx = list(indices)
        if not idx or len(idx) % 2 == 0 or any(not 0 <= i < self.num_patterns for i in idx):
            raise ValueError(
                f"indices must be an odd number of pattern indices in [0, {self.num_patterns}), got {indices!r}"
            )
        eps = torch.ones(len(idx), dtype=self.patterns.dtype) if signs is None else signs
        return torch.sign(eps.to(self.patterns.dtype) @ self.patterns[idx])

    def run(
        self,
        s0: Tensor,
        max_sweeps: int = 100,
        temperature: float = 0.0,
        schedule: str = "async",
        generator: torch.Generator | None = None,
    ) -> HopfieldRun:
        """Iterate the network from states ``s0`` (..., N).

        ``schedule="async"``: each sweep visits the sites in a fresh random order (shared by
        the starts, which are updated together), one site at a time (T = 0: s_i ← sign(h_i), ties keep s_i; T > 0: Glauber).
        ``"sync"``: all sites at once from the previous state (T = 0 only is deterministic;
        at T > 0 each site is drawn independently). Stops when every start has had a sweep with
        no change, or after ``max_sweeps``.
        """
        check_positive_int(max_sweeps, "max_sweeps")
        if (
            not (isinstance(temperature, int | float) and math.isfinite(temperature))
            or temperature < 0
        ):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        s0 = self._check_states(s0, "s0")
        batch = s0.shape[:-1]
        n = self.num_spins
        s = s0.reshape(-1, n).clone()
        rows = s.shape[0]
        j = self.couplings
        field = s @ j
        energies = [-0.5 * (s * field).sum(-1)]
        converged = torch.zeros(rows, dtype=torch.bool, device=s.device)
        sweeps = torch.zeros(rows, dtype=torch.long, device=s.device)
        for _ in range(max_sweeps):
            before = s.clone()
            if schedule == "sync":
                s = self._decide(s, field, temperature, generator)
                field = s @ j
            else:
                order = torch.randperm(n, generator=generator).tolist()
                for site in order:  # asynchronous: one site at a time, all starts together
                    old = s[:, site]
                    delta = self._decide(old, field[:, site], temperature, generator) - old
                    s[:, site] += delta
                    field.addr_(delta, j[site])
            changed = (s != before).any(-1)
            sweeps = sweeps + (~converged).long()
            converged = converged | ~changed
            energies.append(-0.5 * (s * field).sum(-1))
            if bool(converged.all()):  # one sync per sweep
                break
        trace = torch.stack(energies, dim=-1)
        state = s.reshape(*batch, n)
        return HopfieldRun(
            state=state,
            converged=converged.reshape(batch),
            sweeps=sweeps.reshape(batch),
            energy_trace=trace.reshape(*batch, trace.shape[-1]),
            overlaps=state @ self.patterns.T / n,
        )

    @staticmethod
    def _decide(
        old: Tensor, field: Tensor, temperature: float, generator: torch.Generator | None
    ) -> Tensor:
        if temperature == 0.0:
            # ties (h_i = 0 up to the rounding of the incrementally updated field) keep s_i
            return torch.where(field.abs() <= _TIE, old, torch.sign(field))
        u = torch.rand(old.shape, dtype=old.dtype, device=old.device, generator=generator)
        up = u < torch.sigmoid(2.0 * field / temperature)
        return torch.where(up, 1.0, -1.0).to(old.dtype)

    def corrupt(
        self, states: Tensor, fraction: float, generator: torch.Generator | None = None
    ) -> Tensor:
        """Flip exactly round(fraction · N) randomly chosen spins of each state (..., N)."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
        states = self._check_states(states, "states")
        flips = round(fraction * self.num_spins)
        keys = torch.rand(states.shape, generator=generator, device=states.device)
        rank = keys.argsort(dim=-1).argsort(dim=-1)
        return torch.where(rank < flips, -states, states)

    def basin_sizes(
        self,
        corruption: list[float] | tuple[float, ...],
        trials: int = 20,
        threshold: float = 0.9,
        max_sweeps: int = 50,
        generator: torch.Generator | None = None,
    ) -> BasinEstimate:
        """Fraction of corrupted starts that flow back to their pattern, per corruption level.

        Every stored pattern is corrupted ``trials`` times at every level (one batched run);
        a start "returns" when its final overlap with its own pattern is ≥ ``threshold``.
        """
        check_positive_int(trials, "trials")
        levels = torch.tensor(list(corruption), dtype=self.patterns.dtype)
        if levels.ndim != 1 or levels.numel() == 0 or bool(((levels < 0) | (levels > 1)).any()):
            raise ValueError(
                f"corruption must be a non-empty list of fractions in [0, 1], got {corruption!r}"
            )
        starts = torch.stack(
            [
                self.corrupt(
                    self.patterns.expand(trials, *self.patterns.shape), float(f), generator
                )
                for f in levels
            ]
        )  # (levels, trials, P, N)
        result = self.run(starts, max_sweeps=max_sweeps, generator=generator)
        own = result.overlaps.diagonal(dim1=-2, dim2=-1)  # (levels, trials, P)
        returned = (own >= threshold).to(self.patterns.dtype).flatten(1)
        fraction = returned.mean(-1)
        count = returned.shape[-1]
        return BasinEstimate(
            corruption=levels,
            fraction_returned=fraction,
            stderr=(fraction * (1 - fraction) / count).sqrt(),
            final_overlap=own.flatten(1).mean(-1),
            trials=count,
        )

    def find_attractors(
        self,
        starts: int = 200,
        max_sweeps: int = 100,
        generator: torch.Generator | None = None,
    ) -> AttractorCensus:
        """Run from ``starts`` random states and classify the distinct fixed points reached."""
        check_positive_int(starts, "starts")
        bits = torch.randint(0, 2, (starts, self.num_spins), generator=generator)
        result = self.run((2 * bits - 1).to(self.patterns.dtype), max_sweeps, generator=generator)
        final = result.state[result.converged]
        canonical = final * torch.where(final[:, :1] < 0, -1.0, 1.0).to(final.dtype)
        unique, counts = torch.unique(canonical, dim=0, return_counts=True)
        order = counts.argsort(descending=True)
        unique, counts = unique[order], counts[order]
        m = unique @ self.patterns.T / self.num_spins
        kinds = tuple(self._kind(state, overlap) for state, overlap in zip(unique, m, strict=True))
        energies = -0.5 * torch.einsum("kn,nm,km->k", unique, self.couplings, unique)
        return AttractorCensus(unique, counts, m, energies, kinds)

    def _kind(self, state: Tensor, overlap: Tensor) -> str:
        if float(overlap.abs().max()) >= 0.9:
            return "pattern"
        ranked = overlap.abs().argsort(descending=True)
        for size in (3, 5):
            if size > self.num_patterns:
                break
            top = ranked[:size]
            mixture = torch.sign(torch.sign(overlap[top]) @ self.patterns[top])
            if abs(float(mixture @ state)) / self.num_spins >= 0.9:
                return "mixture"
        return "spurious"

    def path_energies(
        self, start: Tensor, end: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Energies along a path from ``start`` to ``end`` flipping the differing spins one by one
        in random order: (K + 1,) for K differing sites (the barrier between two attractors)."""
        start = self._check_states(start, "start")
        end = self._check_states(end, "end")
        differ = torch.nonzero(start != end).squeeze(-1)
        order = differ[torch.randperm(differ.numel(), generator=generator)]
        flip = torch.zeros(order.numel() + 1, self.num_spins, dtype=torch.bool)
        flip[torch.arange(1, order.numel() + 1), order] = True
        flip = flip.cumsum(0) > 0
        steps = torch.where(flip, -start, start)
        return self.energy(steps)
