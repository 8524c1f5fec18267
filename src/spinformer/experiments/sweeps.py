r"""Sweep points: one grid point of each of three maps (phases, mean field in D, Hopfield capacity).

Each experiment here is *one point* of a map, a pure function of its config, meant to be run by
:func:`spinformer.sweep.sweep` over a grid (and seeds); the figure helpers turn the sweep's table
(its rows: config keys + metrics) into the map.

* ``attention_phase_point`` -- the mean-field equation of attention
  m = Σ_j x_j softmax_j(β x_jᵀ W_QK m) (modern Hopfield retrieval, Ramsauer et al., "Hopfield
  networks is all you need", 2020) for N centred Gaussian tokens in D dimensions
  and tied query/key weights, W_QK = g·W_Qᵀ W_Q (Gaussian W_Q of variance 1/D; symmetric and
  positive semi-definite, so C W_QK has real non-negative eigenvalues and m = 0 loses stability
  in a pitchfork rather than a Hopf bifurcation, where an untied head's iteration starts to
  rotate and has no attractor to count): the number of stable fixed points
  and the largest basin (fraction of queries x_i flowing to one attractor) at (β, g). For centred
  tokens m = 0 is a solution with Jacobian β C W_QK, C = N⁻¹ Σ_j x_j x_jᵀ, so it is stable
  exactly below the critical line β_c = 1/ρ(C W_QK) (recorded as ``beta_c``; it scales as 1/g).
* ``vector_mean_field_error`` -- naive mean field and TAP against Monte Carlo (with its standard
  error) for an SK model of N unit vector spins in D dimensions (field of variance 1/D per
  component): mean field becomes exact as the number of spin components grows (Stanley,
  "Spherical model as the limit of infinite spin dimensionality", 1968). At fixed β a spin's
  fluctuation per component is (1 − |m|²)/D, so the Onsager reaction energy naive mean field omits, −(β/2) Σ_ij J_ij² (1 − |m_i|²)(1 − |m_j|²)/D
  to leading order (Thouless, Anderson and Palmer, "Solution of 'Solvable model of a spin
  glass'", 1977), shrinks as 1/D, and TAP, which keeps it, errs at the next order. The headline
  quantity is therefore the energy per spin, whose mean-field error is two orders of magnitude
  above the Monte Carlo standard error of many short chains (the vector engine is batched over
  chains); the default β = 0.8 is strong coupling yet below naive mean field's own (spurious)
  ordering at β = D/2 for D ≥ 2. The slope in D is a log-log fit over the sweep's rows
  (:func:`log_log_slope`).
* ``hopfield_retrieval_point`` -- the final overlap of T = 0 asynchronous dynamics started at a
  stored pattern of a classical Hopfield network with P = αN random patterns (Amit, Gutfreund
  and Sompolinsky, "Storing infinite numbers of patterns in a spin-glass model of neural
  networks", 1985: retrieval collapses at α_c ≈ 0.138). Curves for growing N cross near α_c.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import torch

from spinformer.attention.mean_field import fixed_points, spectral_radius
from spinformer.experiments._common import log_log_slope
from spinformer.experiments._plot import new_figure
from spinformer.experiments._registry import (
    POSITIVE,
    ExperimentResult,
    Limit,
    register_experiment,
)
from spinformer.hopfield.capacity import classical_retrieval
from spinformer.physics import VectorSpinModel, sherrington_kirkpatrick, thermodynamics

__all__ = [
    "attention_phase_point",
    "hopfield_retrieval_point",
    "log_log_slope",
    "phase_figure",
    "vector_mean_field_error",
]


def centred_tokens_and_coupling(
    num_tokens: int, dim: int, coupling_scale: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """N centred Gaussian tokens (N, D) and the tied W_QK = g·W_Qᵀ W_Q (D, D), float64, seeded."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tokens, dim, generator=generator, dtype=torch.float64)
    x = x - x.mean(dim=0)
    w_q = torch.randn(dim, dim, generator=generator, dtype=torch.float64) / math.sqrt(dim)
    return x, coupling_scale * (w_q.T @ w_q)


@register_experiment(
    title="One point of the phase diagram of attention's mean-field equation",
)
def attention_phase_point(
    beta: Annotated[float, POSITIVE] = 1.0,
    coupling_scale: Annotated[float, POSITIVE] = 1.0,
    num_tokens: Annotated[int, Limit(2)] = 16,
    dim: Annotated[int, POSITIVE] = 4,
    num_random: int = 16,
    seed: int = 0,
) -> ExperimentResult:
    """Stable fixed points and the largest basin of m = f(m) at (β, g), and β_c = 1/ρ(C W_QK)."""
    x, w_qk = centred_tokens_and_coupling(num_tokens, dim, coupling_scale, seed)
    covariance = x.T @ x / num_tokens
    beta_c = 1.0 / float(spectral_radius(covariance @ w_qk))
    found = fixed_points(x, w_qk, beta, num_random=num_random, seed=seed)
    stable = found.stable
    basins = found.basin_fraction[stable]
    return ExperimentResult(
        metrics={
            "num_stable": int(stable.sum()),
            "num_fixed_points": found.num_fixed_points,
            "largest_basin": float(basins.max()) if basins.numel() else 0.0,
            "beta_c": beta_c,
            "beta_over_beta_c": beta / beta_c,
            "unconverged_fraction": found.unconverged_fraction,
        },
    )


def phase_figure(rows: Sequence[Mapping[str, Any]], metric: str = "num_stable") -> Any:
    """Heatmap of ``metric`` (seed-averaged) over (g, β) with the critical line β_c(g) over it."""
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    gs = sorted({r["coupling_scale"] for r in ok})
    betas = sorted({r["beta"] for r in ok})
    cell: dict[tuple[float, float], list[float]] = {}
    critical: dict[float, list[float]] = {}
    for r in ok:
        cell.setdefault((r["coupling_scale"], r["beta"]), []).append(float(r[metric]))
        critical.setdefault(r["coupling_scale"], []).append(float(r["beta_c"]))
    grid = [
        [sum(cell[(g, b)]) / len(cell[(g, b)]) if (g, b) in cell else math.nan for g in gs]
        for b in betas
    ]
    fig, ax = new_figure(width=5.4, height=4.2)
    image = ax.pcolormesh(_edges(gs), _edges(betas), grid, cmap="viridis", shading="flat")
    fig.colorbar(image, ax=ax, label=metric.replace("_", " "))
    line = [sum(critical[g]) / len(critical[g]) for g in gs]
    ax.plot(gs, line, "w--", lw=2, label="β_c = 1/ρ(C W_QK) (seed mean)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(_edges(betas)[0], _edges(betas)[-1])
    ax.set_xlabel("coupling scale g")
    ax.set_ylabel("β")
    ax.grid(False)
    ax.legend(fontsize=8, loc="upper right")
    return fig


def _edges(centres: Sequence[float]) -> list[float]:
    """Cell edges for log-spaced ``centres`` (geometric midpoints; a lone centre: ×/÷ √2)."""
    if len(centres) == 1:
        return [centres[0] / math.sqrt(2), centres[0] * math.sqrt(2)]
    mids = [math.sqrt(a * b) for a, b in itertools.pairwise(centres)]
    return [centres[0] ** 2 / mids[0], *mids, centres[-1] ** 2 / mids[-1]]


@register_experiment(
    title="Naive mean field and TAP against Monte Carlo for vector spins of dimension D",
)
def vector_mean_field_error(
    spin_dim: Annotated[int, Limit(2)] = 3,
    num_spins: Annotated[int, Limit(2)] = 16,
    beta: Annotated[float, POSITIVE] = 0.8,
    field_scale: float = 0.5,
    sweeps: Annotated[int, POSITIVE] = 300,
    chains: int = 256,
    seed: int = 0,
) -> ExperimentResult:
    """Energy-per-spin and magnetization errors of naive mean field and TAP against Monte Carlo.

    Metrics: ``{method}_energy_error`` = |U_method − U_MC|/N with ``mc_energy_stderr`` (the Monte
    Carlo standard error of U/N), and ``{method}_error`` = max_i |m_i − m_i^MC| with
    ``mc_stderr`` (the largest per-site standard error).
    """
    generator = torch.Generator().manual_seed(seed)
    couplings = sherrington_kirkpatrick(num_spins, generator=generator).couplings
    field = (
        field_scale
        * torch.randn(num_spins, spin_dim, generator=generator, dtype=torch.float64)
        / math.sqrt(spin_dim)
    )
    model = VectorSpinModel(couplings, field, beta, dim=spin_dim)
    reference = thermodynamics(
        model, method="monte_carlo", sweeps=sweeps, chains=chains, generator=generator
    )
    stderr = reference.stderr.get("magnetization")
    energy_stderr = reference.stderr.get("energy")
    metrics: dict[str, float | int | str | bool] = {
        "mc_stderr": float(stderr.max()) if stderr is not None else math.nan,
        "mc_energy_stderr": (
            float(energy_stderr) / num_spins if energy_stderr is not None else math.nan
        ),
    }
    for method in ("mean_field", "tap"):
        approx = thermodynamics(model, method=method, susceptibility=False)
        error = (approx.magnetization - reference.magnetization).norm(dim=-1).max()
        metrics[f"{method}_error"] = float(error)
        metrics[f"{method}_energy_error"] = float(
            (approx.energy - reference.energy).abs() / num_spins
        )
    return ExperimentResult(
        metrics=metrics,
    )


@register_experiment(
    title="Classical Hopfield retrieval overlap at one load α and size N",
)
def hopfield_retrieval_point(
    num_spins: Annotated[int, Limit(2)] = 500,
    load: Annotated[float, POSITIVE] = 0.138,
    starts: Annotated[int, POSITIVE] = 10,
    seed: int = 0,
) -> ExperimentResult:
    """Mean final overlap (and the fraction ≥ 0.9) of T = 0 dynamics started at stored patterns."""
    curve = classical_retrieval(
        num_spins, (load,), starts, generator=torch.Generator().manual_seed(seed)
    )
    return ExperimentResult(
        metrics={
            "overlap": float(curve.mean_overlap[0]),
            "fraction_retrieved": float(curve.fraction_retrieved[0]),
        },
    )
