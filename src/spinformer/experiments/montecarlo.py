r"""Monte Carlo experiments: published values, critical slowing down, ergodicity and its breaking.

If a system is ergodic, a time average along one trajectory equals the ensemble
average; below a transition it is not, and the Gibbs measure splits into a mixture over basins

.. math::

    P(x) = \sum_i P_i\, e^{-\beta E_i(x)}/Z_i, \qquad P_i = Z_i/Z .

:func:`ergodicity` measures both sides on the 2-D Ising model, whose finite tori are exact by
transfer matrix, and on the Curie–Weiss model, exact by a binomial sum. Below T_c with a small
field h the two basins (M > 0, M < 0) have different weights; chains started in one basin stay
there, and the weights are *measured* from the chains inside one basin by the spin-flip
identity (flipping every spin maps basin − onto basin + and h onto −h):
:math:`P_-/P_+ = Z_-/Z_+ = \langle e^{-2\beta h M}\rangle_+`. The mixture Σ P_i ⟨m⟩_i then
reproduces the exact ensemble magnetization, which neither basin's time average does (Palmer,
"Broken ergodicity", 1982). A Hopfield network at low temperature shows the same with 2P basins
(Amit, Gutfreund and Sompolinsky 1985).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
import torch
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from spinformer.experiments._common import seeded
from spinformer.experiments._plot import new_figure
from spinformer.experiments._registry import (
    POSITIVE,
    ExperimentResult,
    Limit,
    SectionExperiments,
)
from spinformer.hopfield import ClassicalHopfield, random_patterns
from spinformer.physics import (
    IsingModel,
    autocorrelation_times,
    curie_weiss,
    estimate_mean,
    sample,
    square_lattice,
    thermodynamics,
)
from spinformer.physics.reference import ONSAGER_BETA_C, curie_weiss_binomial

__all__ = [
    "critical_slowing_down",
    "ergodicity",
    "mc_critical_slowing_down",
    "mc_published_values",
    "monte_carlo_published_values",
]

experiment = SectionExperiments("Monte Carlo and ergodicity", first_order=40)


@experiment(
    title="Monte Carlo against published finite-lattice values",
    cli="mc published",
    report_config={"sweeps": 400, "chains": 8},
)
def mc_published_values(
    sweeps: Annotated[int, POSITIVE] = 1000, chains: Annotated[int, POSITIVE] = 16, seed: int = 0
) -> ExperimentResult:
    """32×32 torus at β = 0.5 (E/N = −1.74556446) and 8×8 at β_c (⟨m²⟩ = 0.6469115750).

    Metropolis (checkerboard) for the first, Wolff for the second; each estimate is compared
    with the published value in units of its own standard error (from τ_int).
    """
    rows = []
    big = thermodynamics(
        square_lattice(32, beta=0.5),
        "monte_carlo",
        sweeps=sweeps,
        chains=chains,
        initial="up",
        generator=seeded(seed),
    )
    e, e_err = float(big.energy) / 1024, float(big.stderr["energy"]) / 1024
    rows.append(
        {
            "system": "32x32, beta=0.5, Metropolis",
            "observable": "E/N",
            "published": -1.74556446,
            "monte carlo": e,
            "stderr": e_err,
            "z": (e + 1.74556446) / e_err,
            "tau_int (sweeps)": float(big.extras["autocorrelation_time"]["energy"]),
        }
    )
    small = thermodynamics(
        square_lattice(8, beta=ONSAGER_BETA_C),
        "monte_carlo",
        algorithm="wolff",
        sweeps=sweeps,
        chains=chains,
        generator=seeded(seed + 1),
    )
    m2, m2_err = (
        float(small.extras["magnetization_squared"]),
        float(small.stderr["magnetization_squared"]),
    )
    rows.append(
        {
            "system": "8x8, beta_c, Wolff",
            "observable": "<m^2>",
            "published": 0.6469115750,
            "monte carlo": m2,
            "stderr": m2_err,
            "z": (m2 - 0.6469115750) / m2_err,
            "tau_int (sweeps)": float(small.extras["autocorrelation_time"]["magnetization_squared"])
            * float(small.extras["acceptance"]),
        }
    )
    worst = max(abs(r["z"]) for r in rows)
    return ExperimentResult(
        metrics={"max_abs_z": worst, "energy_per_spin_32": e, "m2_8": m2},
        tables={"published values": rows},
        notes=[f"Largest deviation: {worst:.2f} standard errors (acceptance: < 3)."],
    )


@experiment(
    title="Critical slowing down: Wolff vs Metropolis at beta_c",
    cli="mc slowing-down",
    report_config={"sizes": (8, 16), "sweeps": 800, "clusters": 200, "chains": 8},
)
def mc_critical_slowing_down(
    sizes: Annotated[tuple[int, ...], Limit(2)] = (8, 16, 32),
    sweeps: Annotated[int, POSITIVE] = 3000,
    clusters: Annotated[int, POSITIVE] = 600,
    chains: Annotated[int, POSITIVE] = 16,
    seed: int = 0,
) -> ExperimentResult:
    """τ_int of m² at β_c against L for Metropolis (sweeps) and Wolff (sweep equivalents).

    Wolff's τ in cluster flips is converted to sweeps with the mean flipped fraction ⟨|C|⟩/N.
    The fitted exponents z (τ ∝ L^z) are ≈ 2.17 for Metropolis and ≈ 0.25 for Wolff in the
    literature; small L gives rough values, but the gap is unmistakable.
    """
    rows = []
    for size in sizes:
        model = square_lattice(size, beta=ONSAGER_BETA_C, dtype=torch.float32)
        metro = sample(model, sweeps, burn_in=sweeps // 5, chains=chains, generator=seeded(seed))
        wolff = sample(
            model, clusters, burn_in=clusters // 5, chains=chains, algorithm="wolff",
            generator=seeded(seed + 1),
        )  # fmt: skip
        flipped = float(wolff.acceptance.mean())
        rows.append(
            {
                "L": size,
                "tau Metropolis (sweeps)": float(
                    autocorrelation_times(metro)["magnetization_squared"].mean()
                ),
                "tau Wolff (clusters)": float(
                    autocorrelation_times(wolff)["magnetization_squared"].mean()
                ),
                "mean cluster / N": flipped,
            }
        )
        rows[-1]["tau Wolff (sweeps)"] = rows[-1]["tau Wolff (clusters)"] * flipped
    sizes_arr = np.array([r["L"] for r in rows], dtype=float)
    metrics: dict[str, float | int | str | bool] = {}
    fig, ax = new_figure()
    for key, label in [("tau Metropolis (sweeps)", "Metropolis"), ("tau Wolff (sweeps)", "Wolff")]:
        taus = np.array([r[key] for r in rows])
        ax.loglog(sizes_arr, taus, "o-", label=label)
        if len(rows) > 1:
            z = float(np.polyfit(np.log(sizes_arr), np.log(taus), 1)[0])
            metrics[f"z_{label.lower()}"] = z
    ax.set_xticks(sizes_arr, [str(int(size)) for size in sizes_arr])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("L (log scale)")
    ax.set_ylabel("τ_int(m²) in sweeps (log scale)")
    ax.set_title("critical slowing down at β_c", fontsize=10)
    ax.legend()
    return ExperimentResult(
        metrics=metrics,
        tables={"autocorrelation times": rows},
        figures={"tau_vs_L": fig},
        notes=["Dynamic exponents from a log-log fit over the sizes run (literature: 2.17, 0.25)."],
    )


def _mean_and_err(series: torch.Tensor) -> tuple[float, float]:
    est = estimate_mean(series)
    return float(est.mean), float(est.stderr)


def _basin_mixture(
    model: IsingModel,
    exact_m: float,
    sweeps: int,
    chains: int,
    seed: int,
    label: str,
    exact_energy: float | None = None,
) -> dict[str, Any]:
    """Chains started in the + and − basins, and the mixture Σ P_i ⟨m⟩_i with measured P_i.

    The weights come from the + chains alone, P_−/P_+ = ⟨e^{−2βhM}⟩_+ (module docstring); the
    error of the mixture is that of its linearised series (delta method), which carries the
    covariance of P_+ and ⟨m⟩_+ (both from the same chains) and their autocorrelation.
    """
    n = model.num_spins
    beta, field = float(model.beta), float(model.field.mean())
    basin: dict[str, dict[str, Any]] = {}
    rows = []
    for k, (name, start) in enumerate([("+", "up"), ("-", -torch.ones(n, dtype=model.dtype))]):
        run = sample(model, sweeps, chains=chains, initial=start, generator=seeded(seed + 1 + k))
        m = run.magnetization
        sign = 1.0 if name == "+" else -1.0
        basin[name] = {
            "run": run,
            "m": _mean_and_err(m),
            "E": _mean_and_err(run.energy / n),
            "escape": float((sign * m < 0).double().mean()),
        }
        rows.append(
            {
                "regime": label,
                "average": f"time, start in basin {name}",
                "E/N": basin[name]["E"][0],
                "E/N err": basin[name]["E"][1],
                "<m>": basin[name]["m"][0],
                "<m> err": basin[name]["m"][1],
                "exact E/N": exact_energy,
                "exact <m>": exact_m,
            }
        )
    plus_series = basin["+"]["run"].magnetization
    weights = torch.exp(-2.0 * beta * field * n * plus_series)  # P-/P+ = <e^{-2βhM}>+
    ratio = estimate_mean(weights)
    r, r_err = float(ratio.mean), float(ratio.stderr)
    p_plus, p_minus = 1.0 / (1.0 + r), r / (1.0 + r)
    (mp, _), (mm, mm_err) = basin["+"]["m"], basin["-"]["m"]
    mixture = p_plus * mp + p_minus * mm
    linear = p_plus * plus_series - (mp - mm) / (1.0 + r) ** 2 * weights
    mixture_err = math.sqrt(float(estimate_mean(linear).stderr) ** 2 + (p_minus * mm_err) ** 2)
    rows.append(
        {
            "regime": label,
            "average": "mixture sum_i P_i <m>_i",
            "<m>": mixture,
            "<m> err": mixture_err,
            "exact <m>": exact_m,
        }
    )
    return {
        "basin": basin,
        "rows": rows,
        "p_plus": p_plus,
        "p_err": r_err / (1.0 + r) ** 2,
        "mixture": mixture,
        "mixture_err": mixture_err,
        "z": (mixture - exact_m) / mixture_err,
    }


@experiment(
    title="Ergodicity and its breaking: time vs ensemble averages, the mixture of basins",
    cli="mc ergodicity",
    report_config={"size": 10, "sweeps": 1500, "chains": 8},
)
def ergodicity(
    size: Annotated[int, Limit(2)] = 10,
    beta_high: Annotated[float, POSITIVE] = 0.3,
    beta_low: Annotated[float, POSITIVE] = 0.6,
    field: float = 0.01,
    sweeps: Annotated[int, Limit(4)] = 4000,
    chains: Annotated[int, POSITIVE] = 16,
    cw_size: Annotated[int, Limit(2)] = 32,
    cw_beta: Annotated[float, POSITIVE] = 2.5,
    cw_field: float = 0.003,
    cw_sweeps: Annotated[int, POSITIVE] = 600,
    seed: int = 0,
) -> ExperimentResult:
    """Time averages against exact ensemble averages above and below T_c (2-D Ising, L×L).

    Above T_c one long chain's time average equals the exact ensemble average. Below T_c (with
    a small field h) chains started in the + and − basins stay there (escape fraction ≈ 0) and
    their time averages differ; the basin weights measured from the + basin,
    P_−/P_+ = ⟨e^{−2βhM}⟩_+, combine the per-basin averages into Σ P_i ⟨m⟩_i, which matches the
    exact ⟨m⟩ (transfer matrix). The Curie–Weiss model (``cw_size`` spins, J_ij = 1/N, at
    ``cw_beta`` > 1) repeats the decomposition against the exact binomial sum. A Hopfield net at
    low temperature shows the same with one basin per stored pattern.
    """
    n = size * size
    rows = []
    # -- above T_c: one long chain vs the exact ensemble -------------------------------------
    hot = square_lattice(size, beta=beta_high)
    exact_hot = thermodynamics(hot, susceptibility=False)
    long_run = sample(hot, sweeps * chains // 4, chains=1, generator=seeded(seed))
    e_time, e_err = _mean_and_err(long_run.energy / n)
    m_time, m_err = _mean_and_err(long_run.magnetization)
    rows.append(
        {
            "regime": f"above T_c (beta={beta_high})",
            "average": "one chain, time",
            "E/N": e_time,
            "E/N err": e_err,
            "<m>": m_time,
            "<m> err": m_err,
            "exact E/N": float(exact_hot.energy) / n,
            "exact <m>": float(exact_hot.magnetization.mean()),
        }
    )
    # -- below T_c: two basins -----------------------------------------------------------------
    cold = square_lattice(size, beta=beta_low, field=field)
    exact_cold = thermodynamics(cold, susceptibility=False)
    exact_m = float(exact_cold.magnetization.mean())
    ising = _basin_mixture(
        cold, exact_m, sweeps, chains, seed, f"below T_c (beta={beta_low}, h={field})",
        float(exact_cold.energy) / n,
    )  # fmt: skip
    rows += ising["rows"]
    basin, p_plus, p_err = ising["basin"], ising["p_plus"], ising["p_err"]
    mixture, mixture_err, mixture_z = ising["mixture"], ising["mixture_err"], ising["z"]
    mp, mm = basin["+"]["m"][0], basin["-"]["m"][0]
    # -- Curie–Weiss below T_c = 1: the same decomposition, exact by the binomial sum ----------
    cw_model = curie_weiss(cw_size, beta=cw_beta, field=cw_field)
    _, cw_exact, cw_energy = curie_weiss_binomial(cw_size, cw_beta, cw_field)
    cw = _basin_mixture(
        cw_model, cw_exact, cw_sweeps, chains, seed + 20,
        f"Curie-Weiss N={cw_size} (beta={cw_beta}, h={cw_field})", cw_energy,
    )  # fmt: skip
    rows += cw["rows"]
    # -- Hopfield network: one basin per stored pattern -----------------------------------------
    net = ClassicalHopfield(random_patterns(3, 100, seeded(seed + 5)))
    starts = torch.cat([net.patterns, -net.patterns]).repeat(4, 1)
    temperature = 0.4
    overlaps = []
    state = starts
    for step in range(20):
        state = net.run(
            state, max_sweeps=5, temperature=temperature, generator=seeded(seed + 10 + step)
        ).state
        overlaps.append(net.overlaps(state))
    time_avg = torch.stack(overlaps[4:]).mean(0).reshape(4, 6, 3).mean(0)  # (start, pattern)
    hop_rows = [
        {
            "start": f"{'+' if i < 3 else '-'}xi^{i % 3 + 1}",
            **{f"<m_{mu + 1}>_time": float(time_avg[i, mu]) for mu in range(3)},
        }
        for i in range(6)
    ]
    ensemble = float(time_avg.mean(0).abs().max())
    fig, axes = new_figure(ncols=2)
    for name, color in [("+", "C0"), ("-", "C3")]:
        series = basin[name]["run"].magnetization[:, 0].numpy()
        axes[0].plot(series, color=color, lw=0.6, label=f"start {name}")
    axes[0].axhline(exact_m, color="k", ls="--", lw=1, label="exact ensemble <m>")
    axes[0].axhline(mixture, color="C2", ls=":", lw=1.5, label="mixture Σ P_i <m>_i")
    axes[0].set_xlabel("sweep")
    axes[0].set_ylabel("m")
    axes[0].set_title(f"{size}x{size} Ising, β={beta_low}, h={field}")
    axes[0].legend(fontsize=7)
    image = axes[1].imshow(time_avg.numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    axes[1].set_xticks(range(3), [f"m_{mu + 1}" for mu in range(3)])
    axes[1].set_yticks(range(6), [r["start"] for r in hop_rows])
    axes[1].set_title(f"Hopfield N=100, T={temperature}:\ntime-averaged overlaps", fontsize=10)
    axes[1].grid(False)
    fig.colorbar(image, ax=axes[1])
    # -- one chain's running time average against the ensemble value --------------------------
    steps = torch.arange(1, long_run.energy.shape[0] + 1, dtype=torch.float64)
    averages, axes_t = new_figure(ncols=2)
    running_e = long_run.energy[:, 0].double().cumsum(0) / steps / n
    axes_t[0].plot(steps.numpy(), running_e.numpy(), color="C0", label="time average, one chain")
    axes_t[0].axhline(float(exact_hot.energy) / n, color="k", ls="--", lw=1, label="exact ensemble")
    axes_t[0].set_xscale("log")
    axes_t[0].set_xlabel("sweeps t")
    axes_t[0].set_ylabel("(1/t) Σ E/N")
    axes_t[0].set_title(f"above T_c: β={beta_high}, ergodic", fontsize=10)
    axes_t[0].legend(fontsize=7)
    for name, color in [("+", "C0"), ("-", "C3")]:
        series = basin[name]["run"].magnetization[:, 0].double()
        running = series.cumsum(0) / torch.arange(1, series.shape[0] + 1, dtype=torch.float64)
        axes_t[1].plot(running.numpy(), color=color, label=f"time average, start {name}")
    axes_t[1].axhline(exact_m, color="k", ls="--", lw=1, label="exact ensemble <m>")
    axes_t[1].set_xscale("log")
    axes_t[1].set_xlabel("sweeps t")
    axes_t[1].set_ylabel("(1/t) Σ m")
    axes_t[1].set_title(f"below T_c: β={beta_low}, stuck in a basin", fontsize=10)
    axes_t[1].legend(fontsize=7)
    return ExperimentResult(
        metrics={
            "above_tc_energy_z": (e_time - float(exact_hot.energy) / n) / e_err,
            "basin_plus_m": mp,
            "basin_minus_m": mm,
            "escape_fraction_plus": basin["+"]["escape"],
            "escape_fraction_minus": basin["-"]["escape"],
            "P_plus": p_plus,
            "P_plus_err": p_err,
            "mixture_m": mixture,
            "mixture_m_err": mixture_err,
            "exact_m": exact_m,
            "mixture_z": mixture_z,
            "cw_basin_plus_m": cw["basin"]["+"]["m"][0],
            "cw_basin_minus_m": cw["basin"]["-"]["m"][0],
            "cw_escape_fraction": max(cw["basin"][b]["escape"] for b in "+-"),
            "cw_mixture_m": cw["mixture"],
            "cw_mixture_m_err": cw["mixture_err"],
            "cw_exact_m": cw_exact,
            "cw_mixture_z": cw["z"],
            "hopfield_ensemble_overlap": ensemble,
        },
        tables={"time vs ensemble averages": rows, "Hopfield basins (time averages)": hop_rows},
        figures={"basins": fig, "time vs ensemble averages": averages},
        notes=[
            f"Above T_c one chain's time average of E/N is within "
            f"{abs(rows[0]['E/N'] - rows[0]['exact E/N']) / e_err:.1f} standard errors of the exact value.",
            f"Below T_c the basins give <m> = {mp:+.4f} and {mm:+.4f}; neither is the ensemble "
            f"value {exact_m:+.4f}. With measured weights P_+ = {p_plus:.4f} ± {p_err:.4f}, the "
            f"mixture gives {mixture:+.4f} ± {mixture_err:.4f} ({mixture_z:+.1f} standard errors).",
            f"Curie–Weiss, N = {cw_size}, β = {cw_beta} (T_c = 1): basins "
            f"{cw['basin']['+']['m'][0]:+.4f} / {cw['basin']['-']['m'][0]:+.4f}, P_+ = "
            f"{cw['p_plus']:.4f}; the mixture {cw['mixture']:+.4f} ± {cw['mixture_err']:.4f} "
            f"against the binomial sum {cw_exact:+.4f} ({cw['z']:+.1f} standard errors).",
            "Hopfield: each start keeps overlap ≈ ±1 with its own pattern; averaged over the 2P "
            f"basins (equal weights by symmetry) the overlaps vanish (max |mean| = {ensemble:.3f}).",
        ],
    )


monte_carlo_published_values = mc_published_values
"""Deprecated alias of :func:`mc_published_values` (the registered name)."""

critical_slowing_down = mc_critical_slowing_down
"""Deprecated alias of :func:`mc_critical_slowing_down` (the registered name)."""
