"""Named, seeded, pure experiments: a frozen config in, numbers and figures out.

Every number and figure the CLI, the report and the docs show comes from an experiment
registered here: the single source of each. An experiment is a plain function
``fn(**config) -> ExperimentResult``; it must be a pure function of its config (seeds included),
so that a sweep point can run in a process pool, Ray or Dask unchanged.

The registry owns what is *about* an experiment, so the function holds only its science:

- the **name** is the function's name (``@register_experiment(title=..., ...)``);
- the **config** is derived, not restated: every call is bound to the function's signature with
  the defaults applied (:meth:`Experiment.bind`) and checked against the limits the signature
  declares (``num_tokens: Annotated[int, POSITIVE] = 48``); :meth:`Experiment.run` records that
  bound config in the result, so ``results.json`` always reproduces the run; the function
  returns only metrics, tables, figures and notes;
- the **command line**: ``cli="GROUP COMMAND"`` generates ``spinformer GROUP COMMAND`` (with
  ``--set key=value`` and ``--out DIR``), the same command ``spinformer run NAME`` is;
- the **report**: ``section=`` puts the experiment in ``spinformer report`` with its
  ``report_config`` (CPU-sized, so the whole report builds in minutes); a module whose
  experiments share a section names it once, and their order follows the module
  (:class:`SectionExperiments`).

A config is checked before anything runs (:meth:`Experiment.bind`), by one generic mechanism:
the keys must be parameters of the function; each value must match the parameter's annotation
(``int``, ``float`` — always finite —, ``bool``, ``str``, ``tuple[X, ...]`` — non-empty, a list is
accepted —, ``X | None``); the ranges an experiment declares (:class:`Limit`, in the annotation or with
``limits=``) hold for the value or for every entry of a tuple; and the experiment's own ``check=`` callable
sees the whole bound config for constraints between keys. Every integer fits int64, and a
parameter called ``seed`` is a non-negative integer everywhere. Every failure is a
:class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from spinformer._validation import Limit, lookup

__all__ = [
    "NON_NEGATIVE",
    "POSITIVE",
    "UNIT_INTERVAL",
    "CliCommand",
    "ConfigError",
    "Experiment",
    "ExperimentResult",
    "Limit",
    "SectionExperiments",
    "get_experiment",
    "list_experiments",
    "ordered",
    "register_experiment",
    "run_experiment",
]


class ConfigError(ValueError):
    """A bad experiment config value; ``key`` is the config key at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


POSITIVE = Limit(0, low_open=True)
"""Strictly positive (a count >= 1 for integers, a scale > 0 for floats)."""

NON_NEGATIVE = Limit(0)
"""Zero or more."""

UNIT_INTERVAL = Limit(0, 1)
"""A fraction in [0, 1]."""


def ordered(low: str, high: str) -> Callable[[Mapping[str, Any]], None]:
    """A ``check`` that config ``low`` <= config ``high`` (e.g. the ends of a β range)."""

    def check(config: Mapping[str, Any]) -> None:
        if config[low] > config[high]:
            raise ConfigError(
                high, f"{high} must be >= {low} = {config[low]!r}, got {config[high]!r}"
            )

    return check


_INT64 = Limit(-(2**63), 2**63 - 1)
"""Every integer in a config fits torch's int64 (counts, sizes, seeds)."""

_DEFAULT_LIMITS: dict[str, Limit] = {"seed": Limit(0, 2**63 - 1)}  # torch.Generator seeds


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is tuple:
        args = typing.get_args(annotation)
        if not args:
            return "a non-empty tuple"
        plural = {int: "integers", float: "finite numbers", str: "strings", bool: "booleans"}
        return f"a non-empty tuple of {plural.get(args[0], _type_name(args[0]))}"
    return {
        int: "an integer",
        float: "a finite number",
        bool: "True or False",
        str: "a string",
        type(None): "None",
    }.get(annotation, getattr(annotation, "__name__", str(annotation)))


_MISMATCH = object()


def _coerce(value: Any, annotation: Any) -> Any:
    """``value`` as the annotated type (int -> float, list -> tuple), or ``_MISMATCH``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            coerced = _coerce(value, option)
            if coerced is not _MISMATCH:
                return coerced
        return _MISMATCH
    if origin is tuple:
        args = typing.get_args(annotation)
        if not isinstance(value, (tuple, list)) or not value:
            return _MISMATCH
        element = args[0] if args else Any
        items = tuple(_coerce(v, element) for v in value)
        return _MISMATCH if any(i is _MISMATCH for i in items) else items
    if annotation is type(None):
        return value if value is None else _MISMATCH
    if annotation is bool:
        return value if isinstance(value, bool) else _MISMATCH
    if annotation is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _MISMATCH
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return _MISMATCH
        try:
            number = float(value)
        except OverflowError:  # an integer beyond the float range
            return _MISMATCH
        return number if math.isfinite(number) else _MISMATCH
    if annotation is str:
        return value if isinstance(value, str) else _MISMATCH
    return value  # an annotation this mechanism does not know: left to the experiment


@dataclass(frozen=True)
class ExperimentResult:
    """What an experiment returns: its numbers, tables, figures and notes.

    An experiment fills only ``metrics``, ``tables``, ``figures`` and ``notes``; the registry
    fills ``name`` and ``config`` when it runs it (:meth:`Experiment.run`), with the config bound
    to the function's signature, so the recorded config is the complete one that ran.

    Attributes:
        name: the experiment's registered name.
        config: the full config it ran with (every parameter, defaults filled in).
        metrics: named scalars (JSON-serialisable), the headline numbers.
        tables: named tables, each a list of rows (dicts of column -> value).
        figures: named matplotlib figures.
        notes: short sentences interpreting the numbers (shown in the report).
    """

    name: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float | int | str | bool] = field(default_factory=dict)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CliCommand:
    """The ``spinformer GROUP COMMAND`` alias of an experiment (``--set`` and ``--out`` options).

    ``help`` is the command's help text (default: a pointer to ``spinformer run NAME``). The
    string ``"GROUP COMMAND"`` is accepted wherever a :class:`CliCommand` is.
    """

    group: str
    command: str
    help: str | None = None

    @classmethod
    def parse(cls, spec: str | CliCommand) -> CliCommand:
        if isinstance(spec, CliCommand):
            return spec
        words = spec.split() if isinstance(spec, str) else []
        if len(words) != 2:
            raise ValueError(f"cli must be 'GROUP COMMAND' or a CliCommand, got {spec!r}")
        return cls(*words)


@dataclass(frozen=True)
class Experiment:
    """A registered experiment: its function and what the registry knows about it.

    ``name`` is the function's name; ``report_config`` the report's (CPU-sized) config; ``cli``
    the generated ``spinformer GROUP COMMAND`` alias, if any.
    """

    name: str
    fn: Callable[..., ExperimentResult]
    title: str
    section: str | None
    order: int
    report_config: Mapping[str, Any]
    limits: Mapping[str, Limit] = field(default_factory=dict)
    check: Callable[[Mapping[str, Any]], None] | None = None
    cli: CliCommand | None = None

    @property
    def description(self) -> str:
        return inspect.cleandoc(self.fn.__doc__ or "")

    def defaults(self) -> dict[str, Any]:
        params = inspect.signature(self.fn).parameters
        return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}

    def bind(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The full config (defaults filled in) after checking ``config``; nothing runs.

        Raises:
            ConfigError: an unknown key, a value of the wrong type or non-finite, a value outside
                the experiment's declared limits, or a failed cross-key check.
        """
        params = inspect.signature(self.fn).parameters
        unknown = sorted(set(config) - set(params))
        if unknown:
            raise ConfigError(
                unknown[0],
                f"unknown config keys {unknown} for {self.name!r}; valid: {sorted(params)}",
            )
        hints = typing.get_type_hints(self.fn)
        bound: dict[str, Any] = {}
        for key, param in params.items():
            if key in config:
                value = config[key]
            elif param.default is not inspect.Parameter.empty:
                value = param.default
            else:
                raise ConfigError(key, f"{key} is required by {self.name!r}")
            annotation = hints.get(key)
            if annotation is None and param.default not in (inspect.Parameter.empty, None):
                annotation = type(param.default)
            if annotation is not None:
                coerced = _coerce(value, annotation)
                if coerced is _MISMATCH:
                    raise ConfigError(key, f"{key} must be {_type_name(annotation)}, got {value!r}")
                value = coerced
            entries = value if isinstance(value, tuple) else (value,)
            which = "every entry of " if isinstance(value, tuple) else ""
            limit = self.limits.get(key, _DEFAULT_LIMITS.get(key))
            for entry in entries:
                if isinstance(entry, bool) or not isinstance(entry, (int, float)):
                    continue
                if isinstance(entry, int) and not _INT64.contains(entry):
                    raise ConfigError(key, f"{which}{key} must be a 64-bit integer, got {value!r}")
                if limit is not None and not limit.contains(entry):
                    raise ConfigError(
                        key, f"{which}{key} must be {limit.describe()}, got {value!r}"
                    )
            bound[key] = value
        if self.check is not None:
            self.check(bound)
        return bound

    def run(self, config: Mapping[str, Any] | None = None) -> ExperimentResult:
        """Bind ``config`` (:meth:`bind`), call the function, and record the name and config.

        The result's ``config`` is the bound config itself — every parameter of the function,
        defaults filled in — so running it again reproduces the result.
        """
        bound = self.bind(config or {})
        result = self.fn(**bound)
        return dataclasses.replace(result, name=self.name, config=dict(bound))


_EXPERIMENTS: dict[str, Experiment] = {}


def _annotated_limits(fn: Callable[..., Any]) -> dict[str, Limit]:
    """The limits declared in ``fn``'s signature: ``count: Annotated[int, POSITIVE] = 3``."""
    hints = typing.get_type_hints(fn, include_extras=True)
    return {
        key: meta
        for key, hint in hints.items()
        if typing.get_origin(hint) is typing.Annotated
        for meta in hint.__metadata__
        if isinstance(meta, Limit)
    }


def register_experiment(
    name: str | Callable[..., ExperimentResult] | None = None,
    title: str | None = None,
    section: str | None = None,
    order: int = 100,
    report_config: Mapping[str, Any] | None = None,
    limits: Mapping[str, Limit] | None = None,
    check: Callable[[Mapping[str, Any]], None] | None = None,
    cli: str | CliCommand | None = None,
) -> Any:
    """Register an experiment function; its name is the function's name.

    ``@register_experiment(title="...", section="...")`` registers ``fn`` as ``fn.__name__``
    (``@register_experiment`` alone works too; an explicit ``name`` is still accepted). ``title``
    defaults to the docstring's first line; ``section`` (a report section title) puts the
    experiment in ``spinformer report`` with its ``report_config``. A parameter annotated
    ``Annotated[int, POSITIVE]`` (any :class:`Limit`) must meet that limit (every entry of a
    tuple does); ``limits`` maps config keys to limits the same way, for a signature that does
    not carry them; ``check(config)`` raises
    :class:`ConfigError` for constraints between keys. ``cli="GROUP COMMAND"`` (or a
    :class:`CliCommand`) generates the command ``spinformer GROUP COMMAND`` that runs it. The
    ``report_config`` is checked here, at registration.
    """
    if callable(name):  # used bare: @register_experiment
        return register_experiment()(name)
    command = CliCommand.parse(cli) if cli is not None else None

    def decorate(fn: Callable[..., ExperimentResult]) -> Callable[..., ExperimentResult]:
        key = name or fn.__name__
        if key in _EXPERIMENTS and _EXPERIMENTS[key].fn is not fn:
            raise ValueError(f"experiment {key!r} is already registered")
        params = inspect.signature(fn).parameters
        stray = sorted(set(limits or {}) - set(params))
        if stray:
            raise ValueError(f"limits name keys {stray} that {key!r} does not take")
        declared = {**_annotated_limits(fn), **(limits or {})}
        heading = title or (inspect.cleandoc(fn.__doc__ or "").split("\n", 1)[0] or key)
        experiment = Experiment(
            key,
            fn,
            heading,
            section,
            order,
            dict(report_config or {}),
            declared,
            check,
            command,
        )
        experiment.bind(experiment.report_config)
        _EXPERIMENTS[key] = experiment
        return fn

    return decorate


class SectionExperiments:
    """The decorator of a module whose experiments all join one report section, in page order.

    ``experiment = SectionExperiments(SECTION, first_order=20)``, then each
    ``@experiment(title=..., ...)`` is :func:`register_experiment` with that ``section`` and the
    next ``order`` (20, 21, ... in the order the module defines its experiments).
    """

    def __init__(self, section: str, first_order: int) -> None:
        self.section = section
        self._orders = itertools.count(first_order)

    def __call__(
        self, **options: Any
    ) -> Callable[[Callable[..., ExperimentResult]], Callable[..., ExperimentResult]]:
        """:func:`register_experiment`'s decorator for the next experiment (its ``options``)."""
        return register_experiment(section=self.section, order=next(self._orders), **options)


def list_experiments() -> list[Experiment]:
    """All registered experiments, in report order."""
    return sorted(_EXPERIMENTS.values(), key=lambda e: (e.order, e.name))


def get_experiment(name: str) -> Experiment:
    return lookup(_EXPERIMENTS, name, "name")


def run_experiment(name: str, **config: Any) -> ExperimentResult:
    """Run experiment ``name`` on ``config`` checked by :meth:`Experiment.bind` first.

    The result records the name and the full bound config (:meth:`Experiment.run`).

    Raises:
        ConfigError: a bad config (before anything runs); see :meth:`Experiment.bind`.
    """
    return get_experiment(name).run(config)
