"""Experiment configs are checked against the function's signature and declared limits."""

from __future__ import annotations

import math
from typing import Annotated

import pytest

from spinformer.experiments import (
    ConfigError,
    ExperimentResult,
    Limit,
    get_experiment,
    list_experiments,
    register_experiment,
    run_experiment,
)
from spinformer.experiments._registry import POSITIVE, UNIT_INTERVAL, ordered


@register_experiment(
    "_test_registry_probe",
    "Typed config",
    limits={"sizes": Limit(2), "low": POSITIVE, "fraction": UNIT_INTERVAL},
    check=ordered("low", "high"),
)
def _probe(
    sizes: tuple[int, ...] = (2, 3),
    low: float = 0.5,
    high: float = 1.0,
    fraction: float = 0.0,
    steps: int | None = None,
    flag: bool = False,
    seed: int = 0,
) -> ExperimentResult:
    return ExperimentResult("_test_registry_probe", {})


def test_bind_fills_defaults_and_converts_lists_and_ints():
    bound = get_experiment("_test_registry_probe").bind({"sizes": [4, 5], "high": 2, "steps": 3})
    assert bound == {
        "sizes": (4, 5),
        "low": 0.5,
        "high": 2.0,
        "fraction": 0.0,
        "steps": 3,
        "flag": False,
        "seed": 0,
    }
    assert isinstance(bound["high"], float) and isinstance(bound["sizes"], tuple)


@pytest.mark.parametrize(
    ("config", "key", "message"),
    [
        ({"sizes": 5}, "sizes", "sizes must be a non-empty tuple of integers, got 5"),
        ({"sizes": ()}, "sizes", "non-empty tuple"),
        ({"sizes": (4, 1)}, "sizes", "every entry of sizes must be >= 2, got (4, 1)"),
        ({"sizes": (4, True)}, "sizes", "tuple of integers"),
        ({"low": math.nan}, "low", "low must be a finite number, got nan"),
        ({"low": -math.inf}, "low", "finite number"),
        ({"low": "0.1"}, "low", "finite number, got '0.1'"),
        ({"low": 10**400}, "low", "low must be a finite number"),
        ({"sizes": (2, 10**400)}, "sizes", "every entry of sizes must be a 64-bit integer"),
        ({"steps": 2**63}, "steps", "steps must be a 64-bit integer"),
        ({"low": 0}, "low", "low must be > 0, got 0.0"),
        ({"low": 3.0}, "high", "high must be >= low = 3.0, got 1.0"),
        ({"fraction": 1.5}, "fraction", "fraction must be in [0, 1], got 1.5"),
        ({"steps": 2.5}, "steps", "steps must be an integer or None, got 2.5"),
        ({"flag": 1}, "flag", "flag must be True or False, got 1"),
        ({"seed": -1}, "seed", "seed must be in [0, 9223372036854775807], got -1"),
        ({"colour": 1, "zeta": 2}, "colour", "unknown config keys ['colour', 'zeta']"),
    ],
)
def test_bad_values_name_the_key(config, key, message):
    with pytest.raises(ConfigError) as info:
        run_experiment("_test_registry_probe", **config)
    assert info.value.key == key and message in str(info.value)


def test_registration_checks_limits_and_report_config():
    def fn(count: int = 1) -> ExperimentResult:
        return ExperimentResult("x", {})

    with pytest.raises(ValueError, match="limits name keys"):
        register_experiment("_test_registry_bad", "x", limits={"cuont": POSITIVE})(fn)
    with pytest.raises(ConfigError, match="count must be > 0"):
        register_experiment(
            "_test_registry_bad", "x", report_config={"count": 0}, limits={"count": POSITIVE}
        )(fn)
    assert "_test_registry_bad" not in {e.name for e in list_experiments()}


def test_every_registered_default_config_is_valid():
    for experiment in list_experiments():
        bound = experiment.bind(experiment.report_config)
        assert set(bound) == set(experiment.defaults()) | set(experiment.report_config)


def test_limit_contains_and_describes():
    assert Limit(0, 1).contains(0) and Limit(0, 1).contains(1) and not Limit(0, 1).contains(1.5)
    assert not POSITIVE.contains(0) and POSITIVE.contains(1e-300)
    assert not Limit(0).contains(math.nan) and not Limit().contains(math.nan)
    assert Limit(0, 1, high_open=True).describe() == "in [0, 1)"
    assert Limit(high=3).describe() == "<= 3"


@register_experiment
def _test_registry_annotated(
    count: Annotated[int, POSITIVE] = 2,
    fractions: Annotated[tuple[float, ...], UNIT_INTERVAL] = (0.5,),
    seed: int = 0,
) -> ExperimentResult:
    """Limits declared in the signature."""
    return ExperimentResult(metrics={"count": count})


def test_name_title_limits_and_config_come_from_the_function():
    experiment = get_experiment("_test_registry_annotated")
    assert experiment.title == "Limits declared in the signature."
    assert {k: v.describe() for k, v in experiment.limits.items()} == {
        "count": "> 0",
        "fractions": "in [0, 1]",
    }
    result = run_experiment("_test_registry_annotated", count=3)
    assert result.name == "_test_registry_annotated"
    assert result.config == {"count": 3, "fractions": (0.5,), "seed": 0}  # defaults recorded
    with pytest.raises(ConfigError, match="every entry of fractions must be in"):
        run_experiment("_test_registry_annotated", fractions=(0.5, 2.0))
    with pytest.raises(ConfigError, match="count must be > 0"):
        run_experiment("_test_registry_annotated", count=0)


def test_every_cli_alias_is_a_command_that_runs_its_experiment():
    from typer.testing import CliRunner

    from spinformer.cli import app

    aliased = [e for e in list_experiments() if e.cli is not None]
    assert {(e.cli.group, e.cli.command) for e in aliased} >= {
        ("attention", "table"),
        ("spin", "train"),
        ("hopfield", "capacity"),
        ("mc", "published"),
    }
    for experiment in aliased:
        result = CliRunner().invoke(app, [experiment.cli.group, experiment.cli.command, "--help"])
        assert result.exit_code == 0, result.output
        assert "--set" in result.output and "--out" in result.output
    with pytest.raises(ValueError, match="cli must be 'GROUP COMMAND'"):
        register_experiment("_test_registry_badcli", "x", cli="attention")
