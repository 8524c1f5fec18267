"""The ``spinformer spin`` commands and their experiments (small configs)."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from spinformer.cli import app
from spinformer.experiments import get_experiment, run_experiment
from spinformer.experiments.meanfield import associative_recall_batch

runner = CliRunner()


def test_spin_response_command_reports_one_over_d_slope():
    result = runner.invoke(app, ["spin", "response", "--set", "dims=(16, 64, 256)"])
    assert result.exit_code == 0, result.output
    assert "loglog_slope" in result.output


def test_spin_tap_command_and_slopes():
    result = runner.invoke(
        app, ["spin", "tap", "--set", "num_spins=8", "--set", "epsilons=(0.1, 0.05)"]
    )
    assert result.exit_code == 0, result.output
    metrics = run_experiment("mean_field_tap_scaling", num_spins=8, epsilons=(0.1, 0.05)).metrics
    assert 1.7 < metrics["naive_slope"] < 2.3
    assert 2.6 < metrics["tap_slope"] < 3.4


def test_spin_train_command_runs_both_blocks():
    result = runner.invoke(
        app, ["spin", "train", "--set", "steps=3", "--set", "d_model=12", "--set", "n_heads=2"]
    )
    assert result.exit_code == 0, result.output
    assert "accuracy_spin" in result.output and "accuracy_transformer" in result.output
    assert get_experiment("spin_transformer_recall").section == "Spin-model transformer modules"


def test_spin_command_bad_override_is_named():
    result = runner.invoke(app, ["spin", "response", "--set", "colour=1"])
    assert result.exit_code == 2
    assert "colour" in result.output


def test_associative_recall_targets_are_the_queried_values():
    g = torch.Generator().manual_seed(0)
    tokens, target = associative_recall_batch(g, 32, 4, 8, 8)
    assert tokens.shape == (32, 9)
    keys, values, query = tokens[:, 0:8:2], tokens[:, 1:8:2], tokens[:, -1]
    position = (keys == query[:, None]).float().argmax(-1)
    assert bool((values[torch.arange(32), position] == target).all())
    assert bool(((keys[:, :, None] == keys[:, None, :]).sum((-1, -2)) == 4).all())  # distinct keys
