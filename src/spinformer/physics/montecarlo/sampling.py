"""The sampling loop, :func:`sample`, and its record, :class:`MonteCarloSamples`."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from spinformer._validation import check_positive_int
from spinformer.physics._limits import check_memory, show_progress
from spinformer.physics.models import CompleteGraph, IsingModel, VectorSpinModel, _SpinModel
from spinformer.physics.montecarlo.engines import select_engine

__all__ = ["ALGORITHMS", "MonteCarloSamples", "sample"]

ALGORITHMS = ("metropolis", "heat_bath", "wolff")


class _Deferred:
    """A result computed on first access (large unpacked arrays that a caller may not read)."""

    __slots__ = ("compute",)

    def __init__(self, compute: Callable[[], Tensor]):
        self.compute = compute


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
        method: the algorithm (also :attr:`algorithm`).
        sweeps: number of recorded sweeps (cluster updates for Wolff) after burn-in.
        burn_in: discarded sweeps.
        measure_every: sweeps between measurements.
        extras: ``"engine"``: the engine that ran.

    Engines that keep their state in a layout of their own (the native multi-spin engine, the
    compiled checkerboard) unpack ``final_state`` and ``mean_state`` on first access, so a
    caller who reads only the series does not pay for two (chains, N) arrays; the values do
    not depend on when they are read.
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

    def __getattribute__(self, name: str) -> Any:
        value = object.__getattribute__(self, name)
        if type(value) is _Deferred:
            value = value.compute()
            object.__setattr__(self, name, value)
        return value

    def __getstate__(self) -> dict[str, Any]:
        """Pickled with every result unpacked (the deferred ones hold the engine)."""
        return {name: getattr(self, name) for name in self.__dict__}

    @property
    def algorithm(self) -> str:
        """The algorithm that ran (``"metropolis"``, ``"heat_bath"`` or ``"wolff"``)."""
        return self.method


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


def _check_algorithm(model: _SpinModel, algorithm: str, name: str) -> None:
    """What an algorithm needs from the model, whatever engine runs it."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"{name} must be one of {ALGORITHMS}, got {algorithm!r}")
    if algorithm != "wolff":
        return
    if isinstance(model, VectorSpinModel):
        raise ValueError(f"{name}='wolff' is implemented for Ising models only")
    if bool((model.field != 0).any()):
        raise ValueError(f"{name}='wolff' needs zero field (h = 0)")
    strength = model.bond if model.lattice is not None else model.couplings
    if bool((strength < 0).any()):
        raise ValueError(f"{name}='wolff' needs ferromagnetic couplings (J_ij >= 0)")


def resolve_algorithm(
    algorithm: str | None, method: str | None, default: str = "metropolis"
) -> tuple[str, str]:
    """(algorithm, the keyword it came from): ``method=`` is the deprecated name of ``algorithm=``."""
    if method is None:
        return (default if algorithm is None else algorithm), "algorithm"
    if algorithm is not None:
        raise ValueError("pass algorithm= only (method= is its deprecated name)")
    warnings.warn(
        "sample(method=...) is deprecated; use algorithm=...", DeprecationWarning, stacklevel=3
    )
    return method, "method"


def sample(
    model: IsingModel | VectorSpinModel,
    sweeps: int,
    burn_in: int | None = None,
    chains: int = 1,
    algorithm: str | None = None,
    generator: torch.Generator | None = None,
    initial: Tensor | str = "random",
    measure_every: int = 1,
    snapshot_every: int | None = None,
    correlations: bool = False,
    step_size: float | None = None,
    progress: bool | None = None,
    engine: str = "auto",
    backend: str = "auto",
    *,
    method: str | None = None,
) -> MonteCarloSamples:
    """Run ``chains`` independent Markov chains of ``model`` and record energy and magnetization.

    Args:
        model: an :class:`IsingModel` or :class:`VectorSpinModel` (dense or lattice, batched).
        sweeps: recorded sweeps after burn-in (> 0); one Wolff sweep is one cluster flip.
        burn_in: discarded sweeps first (default ``sweeps // 5``).
        chains: independent chains, run as one batched program (leading dim).
        algorithm: ``"metropolis"`` (default), ``"heat_bath"`` or ``"wolff"`` (Ising, J ≥ 0,
            h = 0). ``method=`` is its deprecated name.
        generator: torch generator on the model's device (reproducible runs).
        initial: ``"random"`` (hot start), ``"up"`` (all spins +1 / along e₁) or spins
            broadcastable to ``(chains, *batch, N[, D])``.
        measure_every: sweeps between recorded measurements.
        snapshot_every: keep the state every this many measurements.
        correlations: also accumulate ⟨σ_i σ_j⟩ (dense N×N per batch entry).
        step_size: vector Metropolis: Gaussian kick size (``None``: uniform proposals).
        progress: show a progress bar (``None``: only when the estimated work is long).
        engine: a registered engine (:func:`~spinformer.physics.montecarlo.available_engines`):
            ``"tensor"`` (tensor operations; every model and algorithm, any device),
            ``"multispin"`` (Metropolis for an Ising model on a periodic even-sided square
            lattice at zero field, 64 chains per int64 word,
            :mod:`spinformer.physics.montecarlo.multispin`; its ``acceptance`` is estimated on
            the sweeps that precede measurements), ``"checkerboard"`` (Metropolis and heat
            bath for an Ising model on a periodic even-sided square lattice with a uniform
            field, compiled, CPU) or ``"auto"`` (default): the engine with the lowest
            estimated cost per sweep among those that support the run. The engine that ran
            is in ``extras["engine"]``.
        backend: where an engine with several implementations runs: for ``"multispin"``,
            ``"native"`` (a fused C kernel built once with the system C compiler and cached;
            CPU), ``"torch"`` (tensor operations, any device, the CUDA path) or ``"auto"``
            (native where it can run; ``SPINFORMER_NATIVE=0`` switches it off).
    """
    algorithm, name = resolve_algorithm(algorithm, method)
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
    if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a positive number or None, got {step_size!r}")
    vector = isinstance(model, VectorSpinModel)
    if vector and model.dim < 2:
        raise ValueError(f"vector models need spin dimension dim >= 2, got {model.dim}")
    if model.lattice is None:  # equilibrium samplers need an energy: J symmetric
        j = model.couplings
        if not torch.allclose(j, j.transpose(-1, -2)):
            raise ValueError("couplings must be symmetric for an equilibrium sampler")
    _check_algorithm(model, algorithm, name)
    chosen = select_engine(model, algorithm, chains, engine)
    if backend not in chosen.backends:
        raise ValueError(
            f"backend must be one of {chosen.backends} for engine {chosen.name!r}, got {backend!r}"
        )
    records = sweeps // measure_every
    if records == 0:
        raise ValueError(f"sweeps ({sweeps}) must be at least measure_every ({measure_every})")
    operations = _sample_cost(
        model, chains, sweeps + burn_in, records, algorithm, correlations, snapshot_every
    )
    progress = show_progress(progress, operations)
    start: Tensor | str = initial
    if not (chosen.draws_initial and initial in ("random", "up")):
        start = _initial_state(model, chains, initial, generator)
    sweeper = chosen.build(model, start, chains, algorithm, generator, step_size, backend)
    batch = (chains, *model.batch_shape)
    dtype, device = model.dtype, model.device
    energy = torch.empty(records, *batch, dtype=dtype, device=device)
    mag_shape = (records, *batch, model.dim) if vector else (records, *batch)
    magnetization = torch.empty(mag_shape, dtype=dtype, device=device)
    correlation_sum = None
    snapshots: list[Tensor] = []
    blocks: Any = range(records)
    if progress:
        from rich.progress import track

        blocks = track(blocks, description=f"{algorithm}: {chains} chains")
    if burn_in:
        sweeper.sweep(burn_in, False)
    run = getattr(sweeper, "run", None)
    if run is not None and not (progress or correlations or snapshot_every is not None):
        run(records, measure_every, energy, magnetization)  # the loop below, in one call
        blocks = ()
    for t in blocks:  # the sweeps up to each measurement run as one call
        sweeper.sweep(measure_every, True)
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
    if sweeps % measure_every:  # the sweeps after the last measurement
        sweeper.sweep(sweeps % measure_every, True)
    final: Tensor | _Deferred
    site_mean: Tensor | _Deferred
    if getattr(sweeper, "deferred_results", False):  # nothing changes the sweeper any more
        final = _Deferred(sweeper.full_state)
        site_mean = _Deferred(lambda: sweeper.site_mean(records))
    else:
        final, site_mean = sweeper.full_state(), sweeper.site_mean(records)
    mean_correlation = None
    if correlation_sum is not None:
        mean_correlation = correlation_sum / (records * chains)
        if vector:
            n, d = model.num_spins, model.dim
            mean_correlation = mean_correlation.reshape(*model.batch_shape, n, d, n, d)
    return MonteCarloSamples(
        energy=energy,
        magnetization=magnetization,
        final_state=final,  # type: ignore[arg-type]
        mean_state=site_mean,  # type: ignore[arg-type]
        acceptance=sweeper.acceptance(),
        snapshots=torch.stack(snapshots) if snapshots else None,
        mean_correlation=mean_correlation,
        method=algorithm,
        sweeps=sweeps,
        burn_in=burn_in,
        measure_every=measure_every,
        extras={"engine": chosen.name},
    )
