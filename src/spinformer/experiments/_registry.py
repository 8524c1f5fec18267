"""Named, seeded, pure experiments: a frozen config in, numbers and figures out.

Every number and figure the CLI, the report and the docs show comes from an experiment
registered here (DESIGN.md, "experiments are the single source"). An experiment is a plain
function ``fn(**config) -> ExperimentResult``; it must be a pure function of its config (seeds
included), so that a sweep point can run in a process pool, Ray or Dask unchanged.

Registering with ``section=`` puts the experiment in ``spinformer report`` with its
``report_config`` (CPU-sized, so the whole report builds in minutes).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Experiment",
    "ExperimentResult",
    "get_experiment",
    "list_experiments",
    "register_experiment",
    "run_experiment",
]


@dataclass(frozen=True)
class ExperimentResult:
    """What an experiment returns.

    Attributes:
        name: the experiment's registered name.
        config: the full config it ran with (defaults filled in).
        metrics: named scalars (JSON-serialisable), the headline numbers.
        tables: named tables, each a list of rows (dicts of column -> value).
        figures: named matplotlib figures.
        notes: short sentences interpreting the numbers (shown in the report).
    """

    name: str
    config: dict[str, Any]
    metrics: dict[str, float | int | str | bool] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Experiment:
    name: str
    fn: Callable[..., ExperimentResult]
    title: str
    section: str | None
    order: int
    report_config: Mapping[str, Any]

    @property
    def description(self) -> str:
        return inspect.cleandoc(self.fn.__doc__ or "")

    def defaults(self) -> dict[str, Any]:
        params = inspect.signature(self.fn).parameters
        return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


_EXPERIMENTS: dict[str, Experiment] = {}


def register_experiment(
    name: str,
    title: str,
    section: str | None = None,
    order: int = 100,
    report_config: Mapping[str, Any] | None = None,
) -> Callable[[Callable[..., ExperimentResult]], Callable[..., ExperimentResult]]:
    """Register ``fn`` under ``name``; ``section`` (report section title) puts it in the report."""

    def decorate(fn: Callable[..., ExperimentResult]) -> Callable[..., ExperimentResult]:
        if name in _EXPERIMENTS and _EXPERIMENTS[name].fn is not fn:
            raise ValueError(f"experiment {name!r} is already registered")
        _EXPERIMENTS[name] = Experiment(name, fn, title, section, order, dict(report_config or {}))
        return fn

    return decorate


def list_experiments() -> list[Experiment]:
    """All registered experiments, in report order."""
    return sorted(_EXPERIMENTS.values(), key=lambda e: (e.order, e.name))


def get_experiment(name: str) -> Experiment:
    if name not in _EXPERIMENTS:
        raise ValueError(f"name must be one of {sorted(_EXPERIMENTS)}, got {name!r}")
    return _EXPERIMENTS[name]


def run_experiment(name: str, **config: Any) -> ExperimentResult:
    """Run experiment ``name``; unknown config keys are an error naming the valid ones."""
    experiment = get_experiment(name)
    valid = set(inspect.signature(experiment.fn).parameters)
    unknown = set(config) - valid
    if unknown:
        raise ValueError(
            f"unknown config keys {sorted(unknown)} for {name!r}; valid: {sorted(valid)}"
        )
    return experiment.fn(**config)
