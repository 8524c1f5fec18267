r"""Monte Carlo engines behind a registry: each says what it can sample and what a sweep costs.

The levels of choice in :func:`spinformer.physics.montecarlo.sample` are one word each:
``algorithm`` (Metropolis, heat bath, Wolff: which Markov chain), ``engine`` (which program runs
it: ``"tensor"`` operations, the ``"multispin"`` coded kernel, the compiled ``"checkerboard"``)
and ``backend`` (where an engine with several implementations runs them, e.g. the multi-spin
engine's native C kernel or torch operations). An engine is a :class:`Engine` record --
``supports(model, algorithm, chains)`` returns ``None`` or the reason it cannot run,
``cost(model, algorithm, chains)`` the estimated seconds per sweep, ``build(...)`` a
:class:`~spinformer.physics.montecarlo.sweepers.Sweeper` -- added by :func:`register_engine`.
``engine="auto"`` picks the cheapest engine that supports the run. Every engine samples the
same distribution, so results for a fixed seed differ between engines only statistically.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from spinformer.physics.models import IsingModel, VectorSpinModel, _SpinModel
from spinformer.physics.montecarlo.checkerboard import CheckerboardSweeper, checkerboard_supported
from spinformer.physics.montecarlo.multispin import (
    BACKENDS,
    MultispinIsing,
    multispin_supported,
    native_backend_available,
)
from spinformer.physics.montecarlo.sweepers import Sweeper, tensor_sweeper

__all__ = [
    "Engine",
    "available_engines",
    "get_engine",
    "register_engine",
    "select_engine",
]

Predicate = Callable[[_SpinModel, str, int], "str | None"]
Cost = Callable[[_SpinModel, str, int], float]


@dataclass(frozen=True)
class Engine:
    """A registered engine.

    Attributes:
        name: the ``engine=`` value.
        supports: ``(model, algorithm, chains)`` → ``None`` when the engine can run, else what
            it needs (completes "engine=NAME needs ...").
        cost: ``(model, algorithm, chains)`` → estimated seconds per sweep (for ``"auto"``).
        build: ``(model, initial, chains, algorithm, generator, step_size, backend)`` →
            a :class:`Sweeper`; ``initial`` is a state tensor ``(chains, *batch, N[, D])``, or
            ``"random"`` / ``"up"`` when ``draws_initial``.
        backends: the ``backend=`` values it accepts (``"auto"`` always).
        draws_initial: the engine draws ``"random"`` / ``"up"`` starts itself.
    """

    name: str
    supports: Predicate
    cost: Cost
    build: Callable[..., Sweeper]
    backends: tuple[str, ...] = ("auto",)
    draws_initial: bool = False


_ENGINES: dict[str, Engine] = {}


def register_engine(engine: Engine) -> Engine:
    """Add ``engine`` to the registry (a later registration under the same name replaces it)."""
    _ENGINES[engine.name] = engine
    return engine


def available_engines() -> tuple[str, ...]:
    """Names of the registered engines, in registration order."""
    return tuple(_ENGINES)


def get_engine(name: str) -> Engine:
    """The engine registered as ``name``."""
    if name not in _ENGINES:
        raise ValueError(f"engine must be one of {('auto', *_ENGINES)}, got {name!r}")
    return _ENGINES[name]


def select_engine(model: _SpinModel, algorithm: str, chains: int, engine: str) -> Engine:
    """The engine named ``engine``, checked against the run, or for ``"auto"`` the cheapest
    engine that supports it."""
    if engine != "auto":
        chosen = get_engine(engine)
        need = chosen.supports(model, algorithm, chains)
        if need is not None:
            raise ValueError(f"engine={engine!r} needs {need}")
        return chosen
    able = [e for e in _ENGINES.values() if e.supports(model, algorithm, chains) is None]
    if not able:
        raise ValueError(f"no engine supports this run (engines: {available_engines()})")
    return min(able, key=lambda e: e.cost(model, algorithm, chains))


# -- the built-in engines --------------------------------------------------------------------


def _sites(model: _SpinModel) -> float:
    batch = max(1, model.batch_shape.numel())
    return float(model.num_spins) * batch * (model.dim if isinstance(model, VectorSpinModel) else 1)


# Estimated seconds per sweep, from benchmarks/montecarlo.py on a 2-core machine (one thread):
# only their order matters, for engine="auto".


def _tensor_cost(model: _SpinModel, algorithm: str, chains: int) -> float:
    # ~20 tensor operations per colour class of ~5 µs each on the CPU, then ~20 ns per site
    # update; a GPU mostly pays the launches. Dense models add the N² local-field product.
    gpu = model.device.type != "cpu"
    per_site = (0.2e-9 if gpu else 20e-9) * (1 + (model.num_spins if model.lattice is None else 0))
    return 2 * 20 * 5e-6 + chains * _sites(model) * per_site


def _build_tensor(
    model: _SpinModel, initial: Tensor, chains: int, algorithm: str, generator: Any,
    step_size: float | None, backend: str,
) -> Sweeper:  # fmt: skip
    return tensor_sweeper(model, initial, algorithm, generator, step_size)


def _multispin_supports(model: _SpinModel, algorithm: str, chains: int) -> str | None:
    if algorithm != "metropolis":
        return "algorithm='metropolis'"
    if not isinstance(model, IsingModel):
        return "an IsingModel"
    return multispin_supported(model)


def _multispin_cost(model: _SpinModel, algorithm: str, chains: int) -> float:
    # one sweep of 64 replicas per word: ~25 ns per word natively, ~200 ns as CPU torch
    # operations, ~0.5 ns on a GPU (where kernel launches, ~0.5 ms a sweep, dominate)
    words = math.ceil(chains / 64) * _sites(model)
    if model.device.type != "cpu":
        return 5e-4 + words * 0.5e-9
    native = native_backend_available(model)  # type: ignore[arg-type]
    return (2e-5 if native else 1e-3) + words * (25e-9 if native else 200e-9)


def _build_multispin(
    model: _SpinModel, initial: Tensor | str, chains: int, algorithm: str, generator: Any,
    step_size: float | None, backend: str,
) -> Sweeper:  # fmt: skip
    return MultispinIsing(model, initial, generator, chains, backend=backend)  # type: ignore[arg-type]


def _checkerboard_cost(model: _SpinModel, algorithm: str, chains: int) -> float:
    return 1e-5 + chains * _sites(model) * 4e-9  # ~4 ns per site update


def _build_checkerboard(
    model: _SpinModel, initial: Tensor | str, chains: int, algorithm: str, generator: Any,
    step_size: float | None, backend: str,
) -> Sweeper:  # fmt: skip
    return CheckerboardSweeper(model, initial, algorithm, generator, chains)  # type: ignore[arg-type]


register_engine(
    Engine("tensor", lambda model, algorithm, chains: None, _tensor_cost, _build_tensor)
)
register_engine(
    Engine(
        "multispin",
        _multispin_supports,
        _multispin_cost,
        _build_multispin,
        backends=BACKENDS,
        draws_initial=True,
    )
)
register_engine(
    Engine(
        "checkerboard",
        lambda model, algorithm, chains: checkerboard_supported(model, algorithm),
        _checkerboard_cost,
        _build_checkerboard,
        draws_initial=True,
    )
)
