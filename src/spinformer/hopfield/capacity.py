r"""Storage capacity: the AGS retrieval cliff of the classical net, the exponential capacity of
the modern one.

Classical (Amit, Gutfreund & Sompolinsky, Phys. Rev. Lett. 55, 1530, 1985): with P = αN random
patterns, a network started *at* a stored pattern stays near it (overlap m ≈ 0.97 or more) while
α < α_c ≈ 0.138; above α_c the retrieval state disappears and the overlap collapses to the small
value of a spin-glass state. :func:`classical_retrieval` measures the final overlap against α.

Modern (Ramsauer et al. 2021, Theorem 3): patterns on the sphere are retrievable while their
separation from the others beats ~ln(P)/β, and a random pattern's largest overlap with P others
grows only like √(2 ln P / D); so at large β the number of patterns retrievable with a fixed
error grows exponentially in the dimension D. :func:`modern_retrieval` measures the error (the
fraction of noisy queries whose fixed point is farther than ``radius`` from their pattern) and
classifies the fixed points, showing the three regimes: global average (small β), metastable
subsets, single patterns (large β).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from spinformer._validation import check_positive_int
from spinformer.hopfield.classical import ClassicalHopfield, random_patterns
from spinformer.hopfield.modern import FIXED_POINT_KINDS, ModernHopfield

__all__ = [
    "CapacityCurve",
    "ModernCapacity",
    "classical_retrieval",
    "modern_retrieval",
    "random_sphere_patterns",
]


@dataclass(frozen=True)
class CapacityCurve:
    """Final overlap with the starting pattern against load α = P/N (classical net)."""

    loads: Tensor
    mean_overlap: Tensor
    stderr: Tensor
    fraction_retrieved: Tensor
    num_spins: int
    starts: int


@dataclass(frozen=True)
class ModernCapacity:
    """Retrieval error and fixed-point kinds on a grid of β × number of patterns.

    ``error`` and ``mean_distance`` are (len(betas), len(counts)); ``kind_fraction`` is
    (len(betas), len(counts), 3) in the order of ``FIXED_POINT_KINDS``.
    """

    betas: Tensor
    counts: Tensor
    error: Tensor
    mean_distance: Tensor
    kind_fraction: Tensor
    dim: int
    queries: int


def classical_retrieval(
    num_spins: int = 1000,
    loads: tuple[float, ...] = (0.05, 0.1, 0.12, 0.14, 0.16, 0.2),
    starts: int = 20,
    max_sweeps: int = 30,
    threshold: float = 0.9,
    generator: torch.Generator | None = None,
) -> CapacityCurve:
    """Start at ``starts`` stored patterns (fresh random patterns per load), run T = 0
    asynchronous dynamics, and record the final overlap with the start."""
    check_positive_int(num_spins, "num_spins")
    check_positive_int(starts, "starts")
    if not loads or any(not a > 0 for a in loads):
        raise ValueError(f"loads must be a non-empty tuple of positive numbers, got {loads!r}")
    means, errors, retrieved = [], [], []
    for alpha in loads:
        count = max(1, round(alpha * num_spins))
        net = ClassicalHopfield(random_patterns(count, num_spins, generator))
        first = net.patterns[: min(starts, count)]
        run = net.run(first, max_sweeps=max_sweeps, generator=generator)
        own = run.overlaps.diagonal()
        means.append(own.mean())
        errors.append(
            own.std(correction=1) / own.numel() ** 0.5 if own.numel() > 1 else own.new_zeros(())
        )
        retrieved.append((own >= threshold).double().mean())
    return CapacityCurve(
        loads=torch.tensor(loads, dtype=torch.float64),
        mean_overlap=torch.stack(means),
        stderr=torch.stack(errors),
        fraction_retrieved=torch.stack(retrieved),
        num_spins=num_spins,
        starts=starts,
    )


def random_sphere_patterns(
    num_patterns: int, dim: int, generator: torch.Generator | None = None
) -> Tensor:
    """Patterns drawn uniformly on the unit sphere S^{D−1}, shape (P, D), float64."""
    check_positive_int(num_patterns, "num_patterns")
    check_positive_int(dim, "dim")
    g = torch.randn(num_patterns, dim, generator=generator, dtype=torch.float64)
    return g / g.norm(dim=-1, keepdim=True)


def modern_retrieval(
    dim: int = 16,
    counts: tuple[int, ...] = (2, 8, 32, 128, 512, 2048),
    betas: tuple[float, ...] = (1.0, 8.0, 32.0, 128.0),
    noise: float = 0.3,
    queries: int = 64,
    radius: float = 0.1,
    max_iter: int = 100,
    generator: torch.Generator | None = None,
) -> ModernCapacity:
    """Noisy queries x_μ + noise·g/√D, retrieved by iterating the update; error = fraction whose
    fixed point is farther than ``radius`` from x_μ (unit patterns)."""
    check_positive_int(dim, "dim")
    check_positive_int(queries, "queries")
    if not counts or not betas:
        raise ValueError("counts and betas must be non-empty")
    errors = torch.zeros(len(betas), len(counts), dtype=torch.float64)
    distances = torch.zeros_like(errors)
    kinds = torch.zeros(len(betas), len(counts), len(FIXED_POINT_KINDS), dtype=torch.float64)
    for k, count in enumerate(counts):
        check_positive_int(count, "counts")
        patterns = random_sphere_patterns(count, dim, generator)
        target = torch.randint(0, count, (queries,), generator=generator)
        kick = torch.randn(queries, dim, generator=generator, dtype=torch.float64)
        start = patterns[target] + noise * kick / dim**0.5
        for b, beta in enumerate(betas):
            net = ModernHopfield(patterns, beta)
            fixed = net.retrieve(start, max_iter=max_iter).state
            distance = (fixed - patterns[target]).norm(dim=-1)
            errors[b, k] = (distance > radius).double().mean()
            distances[b, k] = distance.mean()
            labels = net.classify(fixed)
            for i, kind in enumerate(FIXED_POINT_KINDS):
                kinds[b, k, i] = sum(label == kind for label in labels) / queries
    return ModernCapacity(
        betas=torch.tensor(betas, dtype=torch.float64),
        counts=torch.tensor(counts),
        error=errors,
        mean_distance=distances,
        kind_fraction=kinds,
        dim=dim,
        queries=queries,
    )
