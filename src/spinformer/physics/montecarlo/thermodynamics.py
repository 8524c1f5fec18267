r"""Estimators on Monte Carlo runs: ``thermodynamics(model, "monte_carlo")`` and thermodynamic
integration.

Averages carry the standard error :math:`\sqrt{2\tau_\text{int}\operatorname{Var}/n}` of
:mod:`spinformer.physics.montecarlo.autocorrelation`. ln Z is not an average; it comes from
thermodynamic integration, :math:`\ln Z(\beta) = \ln Z(0) - \int_0^\beta U(\beta')\,d\beta'`,
on Gauss–Legendre nodes.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from spinformer._validation import check_positive_int
from spinformer.physics.models import IsingModel, VectorSpinModel, _SpinModel
from spinformer.physics.montecarlo.autocorrelation import (
    estimate_mean,
    integrated_autocorrelation_time,
)
from spinformer.physics.montecarlo.sampling import ALGORITHMS, MonteCarloSamples, sample
from spinformer.physics.thermo import Thermodynamics, register_method

__all__ = ["autocorrelation_times", "integrate_log_partition", "monte_carlo_thermodynamics"]


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
    engine: str = "auto",
    backend: str = "auto",
) -> Thermodynamics:
    r"""Thermodynamics estimated by Monte Carlo, with standard errors and autocorrelation times.

    U = ⟨E⟩, C = β² Var(E), m_i = ⟨σ_i⟩ and (``susceptibility=True``) χ_ij = β Cov(σ_i, σ_j) are
    averages over ``chains`` × ``sweeps`` samples of :func:`sample`, with its ``algorithm``,
    ``engine`` and ``backend``. ``stderr`` holds √(2τ_int Var/n) for U, for C (from the series (E − Ū)²), for
    m_i (with the mean spin's τ_int; the chain-to-chain scatter of the site means when that is
    larger) and for ⟨m²⟩ and ⟨|m|⟩ of the mean spin m = Σσ_i/N, whose values are in ``extras``
    (``"magnetization_squared"``, ``"abs_magnetization"``). ``extras["autocorrelation_time"]``
    maps observable → τ_int in sweeps (cluster flips for Wolff); ``extras["samples"]`` is the
    :class:`MonteCarloSamples` record.

    ln Z, F and S are not sampled directly. With ``integration_points`` K > 0 they come from
    thermodynamic integration, ln Z(β) = ln Z(0) − ∫₀^β U(β') dβ', on K Gauss–Legendre nodes
    (one batched run of K models); ln Z(0) = N ln 2 for Ising spins and 0 for vector spins (the
    uniform probability measure). Otherwise they are NaN.

    The engine (``"auto"``: the cheapest that supports the run) is used for the thermodynamic
    integration too; ``extras["engine"]`` names it.

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
    options: dict[str, Any] = {  # shared with the thermodynamic integration
        "burn_in": burn_in,
        "chains": chains,
        "algorithm": algorithm,
        "generator": generator,
        "initial": initial,
        "step_size": step_size,
        "engine": engine,
        "backend": backend,
    }
    samples = sample(
        model,  # type: ignore[arg-type]
        sweeps,
        correlations=susceptibility,
        progress=progress,
        **options,
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
        log_z, log_z_err = integrate_log_partition(model, integration_points, sweeps, **options)
        free_energy = -log_z / beta
        entropy = beta * energy.mean + log_z
        stderr["log_partition"] = log_z_err
        stderr["free_energy"] = log_z_err / beta
        stderr["entropy"] = (beta**2 * energy.stderr**2 + log_z_err**2).sqrt()
    extras: dict[str, Any] = {
        "route": algorithm,
        "engine": samples.extras["engine"],
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


_SAMPLE_OPTIONS = (
    "burn_in", "chains", "algorithm", "generator", "initial", "step_size", "engine", "backend"
)  # fmt: skip


def integrate_log_partition(
    model: _SpinModel, points: int, sweeps: int, *args: Any, **options: Any
) -> tuple[Tensor, Tensor]:
    """ln Z(β) = ln Z(0) − β ∫₀¹ U(sβ) ds by Gauss–Legendre on ``points`` nodes, with its se.

    ``options``: arguments of :func:`sample` for the one batched run over the nodes, by keyword
    or, after ``sweeps``, by position in the order ``burn_in``, ``chains``, ``algorithm``,
    ``generator``, ``initial``, ``step_size``, ``engine``, ``backend``."""
    if len(args) > len(_SAMPLE_OPTIONS):
        raise TypeError(
            f"integrate_log_partition takes at most {3 + len(_SAMPLE_OPTIONS)} positional "
            f"arguments, got {3 + len(args)}"
        )
    for name, value in zip(_SAMPLE_OPTIONS, args, strict=False):
        if name in options:
            raise TypeError(f"integrate_log_partition got {name!r} by position and by keyword")
        options[name] = value
    import numpy as np

    nodes, weights = np.polynomial.legendre.leggauss(points)
    dtype, device = model.dtype, model.device
    s = torch.tensor((nodes + 1.0) / 2.0, dtype=dtype, device=device)
    w = torch.tensor(weights / 2.0, dtype=dtype, device=device)
    beta = model.expanded_beta()
    node_shape = (points, *([1] * beta.ndim))
    betas = s.reshape(node_shape) * beta  # (K, *batch)
    node_model = model.with_beta(betas)  # (K, *batch): one batched run over the nodes
    run = sample(node_model, sweeps, **options)  # type: ignore[arg-type]
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
