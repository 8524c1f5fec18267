r"""Hopfield experiments: capacity (classical AGS cliff, modern exponential), regimes, landscapes.

Classical: the retrieval overlap collapses near α_c ≈ 0.138 (Amit, Gutfreund & Sompolinsky
1985). Modern (Ramsauer et al. 2021): retrieval error against the number of stored patterns at
several β; the fixed-point kinds (global / metastable / single) as β grows; the largest number of
patterns retrieved without error grows exponentially with the dimension. Landscapes: the modern
energy on the plane through three stored patterns with retrieval trajectories, and the classical
energy along paths between attractors (the barriers that make them memories).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch

from spinformer.experiments._common import seeded
from spinformer.experiments._plot import new_figure
from spinformer.experiments._registry import (
    POSITIVE,
    UNIT_INTERVAL,
    ExperimentResult,
    Limit,
    SectionExperiments,
)
from spinformer.hopfield import (
    FIXED_POINT_KINDS,
    ClassicalHopfield,
    ModernHopfield,
    classical_retrieval,
    modern_retrieval,
    random_patterns,
    random_sphere_patterns,
)

__all__ = [
    "classical_capacity",
    "hopfield_capacity",
    "hopfield_landscapes",
    "modern_capacity",
    "modern_hopfield_capacity",
]

experiment = SectionExperiments("Hopfield memories", first_order=30)
AGS_CRITICAL_LOAD = 0.138


@experiment(
    title="Classical Hopfield capacity: the retrieval cliff near alpha_c = 0.138",
    cli="hopfield capacity",
    report_config={"loads": (0.05, 0.1, 0.13, 0.16, 0.2), "starts": 10},
)
def hopfield_capacity(
    num_spins: Annotated[int, POSITIVE] = 1000,
    loads: Annotated[tuple[float, ...], POSITIVE] = (
        0.04,
        0.08,
        0.1,
        0.12,
        0.14,
        0.16,
        0.18,
        0.2,
        0.25,
    ),
    starts: Annotated[int, POSITIVE] = 20,
    corruption: Annotated[tuple[float, ...], UNIT_INTERVAL] = (0.0, 0.1, 0.2, 0.3, 0.4),
    seed: int = 0,
) -> ExperimentResult:
    """Final overlap of T = 0 asynchronous dynamics started at stored patterns, against α = P/N;
    and basin sizes (fraction of corrupted starts that return) at α = 0.05 and 0.1."""
    curve = classical_retrieval(num_spins, tuple(loads), starts, generator=seeded(seed))
    rows = [
        {
            "alpha": float(a),
            "P": round(float(a) * num_spins),
            "mean overlap": float(m),
            "stderr": float(e),
            "fraction m >= 0.9": float(f),
        }
        for a, m, e, f in zip(
            curve.loads, curve.mean_overlap, curve.stderr, curve.fraction_retrieved, strict=True
        )
    ]
    fig, axes = new_figure(ncols=2)
    axes[0].errorbar(curve.loads, curve.mean_overlap, yerr=curve.stderr, fmt="o-")
    axes[0].axvline(AGS_CRITICAL_LOAD, color="grey", ls=":", label="AGS α_c = 0.138")
    axes[0].set_xlabel("load α = P/N")
    axes[0].set_ylabel("final overlap with the stored pattern")
    axes[0].set_title(f"N = {num_spins}")
    axes[0].legend(fontsize=8)
    basin_rows = []
    for k, alpha in enumerate((0.05, 0.1)):
        count = round(alpha * 400)
        net = ClassicalHopfield(random_patterns(count, 400, seeded(seed + 1 + k)))
        basins = net.basin_sizes(
            list(corruption), trials=max(1, 40 // count), generator=seeded(seed + 3 + k)
        )
        axes[1].errorbar(
            basins.corruption, basins.fraction_returned, yerr=basins.stderr, fmt="o-",
            label=f"α = {alpha} (N = 400)",
        )  # fmt: skip
        basin_rows += [
            {"alpha": alpha, "corruption": float(c), "fraction returned": float(f)}
            for c, f in zip(basins.corruption, basins.fraction_returned, strict=True)
        ]
    axes[1].set_xlabel("fraction of spins flipped at the start")
    axes[1].set_ylabel("fraction returning to the pattern")
    axes[1].legend(fontsize=8)
    metrics: dict[str, float | int | str | bool] = {
        f"overlap_alpha_{a:g}": float(m) for a, m in zip(loads, curve.mean_overlap, strict=True)
    }
    return ExperimentResult(
        metrics=metrics,
        tables={"retrieval vs load": rows, "basins of attraction": basin_rows},
        figures={"capacity": fig},
        notes=[
            "Below α_c the network stays at the stored pattern (overlap ≈ 1); above it the "
            "retrieval state is gone and the overlap drops to that of a spin-glass state."
        ],
    )


@experiment(
    title="Modern Hopfield capacity and its three regimes",
    cli="hopfield modern-capacity",
    report_config={"counts": (2, 16, 128, 1024), "queries": 32, "dims": (4, 8, 12)},
)
def modern_hopfield_capacity(
    dim: Annotated[int, POSITIVE] = 8,
    counts: Annotated[tuple[int, ...], POSITIVE] = (2, 8, 32, 128, 512, 2048),
    betas: Annotated[tuple[float, ...], POSITIVE] = (1.0, 4.0, 16.0, 64.0),
    dims: Annotated[tuple[int, ...], POSITIVE] = (4, 6, 8, 10, 12),
    capacity_beta: Annotated[float, POSITIVE] = 64.0,
    queries: Annotated[int, POSITIVE] = 64,
    seed: int = 0,
) -> ExperimentResult:
    """Retrieval error vs number of patterns at several β (unit patterns in D dims, queries
    with noise 0.3/√D per coordinate); fixed-point kinds vs β; capacity vs D.

    Capacity at a given D is the largest P = 2^k (k ≤ 12) whose patterns, used as queries
    without noise, are fixed points within 0.1 of themselves in ≥ 95 % of cases at
    β = ``capacity_beta``; its growth with D is the exponential capacity.
    """
    grid = modern_retrieval(
        dim, tuple(counts), tuple(betas), queries=queries, generator=seeded(seed)
    )
    fig, axes = new_figure(ncols=3)
    for b, beta in enumerate(betas):
        axes[0].semilogx(counts, grid.error[b].numpy(), "o-", label=f"β = {beta:g}")
    axes[0].set_xlabel("stored patterns P")
    axes[0].set_ylabel("retrieval error")
    axes[0].set_title(f"D = {dim}")
    axes[0].legend(fontsize=8)
    regime_betas = tuple(float(b) for b in np.geomspace(0.25, 256.0, 11))
    regimes = modern_retrieval(
        dim, (32,), regime_betas, queries=queries, generator=seeded(seed + 1)
    )
    for i, kind in enumerate(FIXED_POINT_KINDS):
        axes[1].semilogx(regime_betas, regimes.kind_fraction[:, 0, i].numpy(), "o-", label=kind)
    axes[1].set_xlabel("β")
    axes[1].set_ylabel("fraction of fixed points")
    axes[1].set_title(f"P = 32, D = {dim}")
    axes[1].legend(fontsize=8)
    capacity_rows = []
    capacity_counts = tuple(2**k for k in range(1, 13))
    for d in dims:
        result = modern_retrieval(
            d, capacity_counts, (capacity_beta,), noise=0.0, queries=queries,
            generator=seeded(seed + 2 + d),
        )  # fmt: skip
        ok = [
            c for c, e in zip(capacity_counts, result.error[0].tolist(), strict=True) if e <= 0.05
        ]
        capacity_rows.append({"D": d, "largest P with error <= 5%": max(ok) if ok else 0})
    axes[2].semilogy(
        [r["D"] for r in capacity_rows],
        [max(r["largest P with error <= 5%"], 1) for r in capacity_rows],
        "o-",
    )
    axes[2].set_xlabel("dimension D")
    axes[2].set_ylabel(f"capacity (β = {capacity_beta:g})")
    rows = [
        {"beta": float(beta), **{f"P={c}": float(grid.error[b, k]) for k, c in enumerate(counts)}}
        for b, beta in enumerate(betas)
    ]
    regime_rows = [
        {
            "beta": beta,
            **{
                kind: float(regimes.kind_fraction[b, 0, i])
                for i, kind in enumerate(FIXED_POINT_KINDS)
            },
        }
        for b, beta in enumerate(regime_betas)
    ]
    return ExperimentResult(
        metrics={f"capacity_D{r['D']}": r["largest P with error <= 5%"] for r in capacity_rows},
        tables={
            "retrieval error": rows,
            "fixed-point kinds (P = 32)": regime_rows,
            "capacity vs dimension": capacity_rows,
        },
        figures={"modern_capacity": fig},
        notes=[
            "Small β: every query flows to the global average (error 1). Intermediate β: "
            "metastable averages of similar patterns. Large β: single-pattern fixed points, "
            "and the number retrievable grows exponentially with D."
        ],
    )


@experiment(
    title="Energy landscapes: modern plane through patterns, classical paths between attractors",
    cli="hopfield landscapes",
    report_config={"grid": 61},
)
def hopfield_landscapes(
    dim: Annotated[int, POSITIVE] = 16,
    beta: Annotated[float, POSITIVE] = 8.0,
    grid: Annotated[int, Limit(2)] = 101,
    num_spins: Annotated[int, POSITIVE] = 200,
    seed: int = 0,
) -> ExperimentResult:
    """Modern energy on the plane through three stored patterns (with retrieval trajectories,
    projected), and classical energy per spin along random single-flip paths between attractors."""
    patterns = random_sphere_patterns(6, dim, seeded(seed))
    net = ModernHopfield(patterns, beta)
    origin = patterns[0]
    u = patterns[1] - origin
    v = patterns[2] - origin
    v = v - (v @ u) / (u @ u) * u  # orthogonal in-plane axes
    a = torch.linspace(-0.6, 1.6, grid, dtype=torch.float64)
    b = torch.linspace(-0.6, 1.6, grid, dtype=torch.float64)
    aa, bb = torch.meshgrid(a, b, indexing="ij")
    points = origin + aa[..., None] * u + bb[..., None] * v
    energy = net.energy(points)
    fig, axes = new_figure(ncols=2)
    contour = axes[0].contourf(aa.numpy(), bb.numpy(), energy.numpy(), levels=30, cmap="viridis")
    fig.colorbar(contour, ax=axes[0])
    basis = torch.stack([u, v])
    gram = basis @ basis.T

    def project(x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(gram, basis @ (x - origin).T).T

    starts = origin + torch.tensor(
        [[0.5, 0.3], [1.2, 1.2], [-0.4, 0.9], [0.9, -0.4], [0.3, 1.3]], dtype=torch.float64
    ) @ torch.stack([u, v])
    trajectory = [starts]
    state = starts
    for _ in range(8):
        state = net.update(state)
        trajectory.append(state)
    path = torch.stack([project(x) for x in trajectory])  # (T, starts, 2)
    for k in range(starts.shape[0]):
        axes[0].plot(path[:, k, 0], path[:, k, 1], "w.-", lw=1, ms=3)
    for k, label in enumerate(["x1", "x2", "x3"]):
        coords = project(patterns[k : k + 1])[0]
        axes[0].plot(coords[0], coords[1], "r*", ms=10)
        axes[0].annotate(label, coords.tolist(), color="r")
    axes[0].set_title(f"modern energy, D={dim}, β={beta:g}")
    classical = ClassicalHopfield(random_patterns(5, num_spins, seeded(seed + 1)))
    mixture = classical.mixture_state([0, 1, 2])
    paths = {
        "pattern 1 -> pattern 2": (classical.patterns[0], classical.patterns[1]),
        "pattern 1 -> -pattern 1": (classical.patterns[0], -classical.patterns[0]),
        "pattern 1 -> mixture(1,2,3)": (classical.patterns[0], mixture),
    }
    rows = []
    for name, (start, end) in paths.items():
        energies = classical.path_energies(start, end, seeded(seed + 2)) / num_spins
        axes[1].plot(np.linspace(0, 1, energies.numel()), energies.numpy(), label=name)
        rows.append(
            {
                "path": name,
                "E/N start": float(energies[0]),
                "E/N end": float(energies[-1]),
                "barrier E/N": float(energies.max() - energies[0]),
            }
        )
    axes[1].set_xlabel("fraction of the differing spins flipped")
    axes[1].set_ylabel("E / N")
    axes[1].set_title(f"classical, N={num_spins}, P=5")
    axes[1].legend(fontsize=7)
    retrieved = net.retrieve(starts).state
    return ExperimentResult(
        metrics={
            "energy_min_on_plane": float(energy.min()),
            "retrieved_kinds": ",".join(net.classify(retrieved)),
        },
        tables={"classical paths": rows},
        figures={"landscapes": fig},
        notes=[
            "Trajectories (white) are projected onto the plane; every update lowers the energy.",
            "Stored patterns sit at E/N ≈ −½; the 3-mixture at ≈ −3/8; paths between "
            "attractors climb a barrier of order N.",
        ],
    )


classical_capacity = hopfield_capacity
"""Deprecated alias of :func:`hopfield_capacity` (the registered name)."""

modern_capacity = modern_hopfield_capacity
"""Deprecated alias of :func:`modern_hopfield_capacity` (the registered name)."""
