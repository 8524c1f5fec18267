"""Training config: TOML + overrides, unknown keys with a suggestion, types and ranges checked."""

from __future__ import annotations

import math

import pytest

from spinformer.train import ConfigError, TrainConfig, load_config, lr_factor


def test_preset_and_overrides_merge(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('task = "digits"\nmodel = "spin"\nmax_steps = 50\nlr = 1\n')
    config = load_config(preset, {"max_steps": 7, "seed": 3})
    assert (config.task, config.model, config.max_steps, config.seed) == ("digits", "spin", 7, 3)
    assert isinstance(config.lr, float) and config.lr == 1.0  # int accepted for a float key
    assert config.to_dict()["lr"] == 1.0


def test_unknown_key_suggests_the_nearest(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'max_step'.*did you mean 'max_steps'"):
        load_config(None, {"max_step": 10})
    preset = tmp_path / "p.toml"
    preset.write_text("lerning_rate = 0.1\n")
    with pytest.raises(ConfigError, match=r"p\.toml.*known keys"):
        load_config(preset)
    preset.write_text("eval_evry = 3\n")
    with pytest.raises(ConfigError, match=r"'eval_evry' in .*p\.toml; did you mean 'eval_every'"):
        load_config(preset)


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"max_steps": 1.5}, r"max_steps must be of type int, got float"),
        ({"max_steps": True}, r"max_steps must be of type int, got bool"),
        ({"lr": "fast"}, r"lr must be of type float, got str"),
        ({"learn_beta": 1}, r"learn_beta must be of type bool"),
        ({"model": "vanilla"}, r"model must be one of \['transformer', 'boltzmann'"),
        ({"task": "mnist"}, r"task must be one of"),
        ({"max_steps": 0}, r"max_steps must be >= 1, got 0"),
        ({"lr": -1.0}, r"lr must be positive"),
        ({"steps": -1}, r"steps must be >= 0"),
        ({"num_pairs": 9, "num_keys": 8}, r"num_pairs must be <= num_keys"),
        ({"order": 3}, r"order must be 1 or 2"),
        ({"adam_beta2": 1.0}, r"adam_beta2 must lie in \[0, 1\)"),
        ({"data_path": "x.txt"}, r"data_path is read by task 'charlm' only"),
    ],
)
def test_bad_values_are_named(changes, pattern):
    with pytest.raises(ConfigError, match=pattern):
        TrainConfig(**changes)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match=r"config file '.*nope\.toml' does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("max_steps = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    nested = tmp_path / "nested.toml"
    nested.write_text("[model]\nd_model = 3\n")
    with pytest.raises(ConfigError, match="flat table"):
        load_config(nested)


def test_config_is_frozen_and_replace_validates():
    config = TrainConfig()
    with pytest.raises(AttributeError):
        config.lr = 0.1  # type: ignore[misc]
    assert config.replace(seed=4).seed == 4
    with pytest.raises(ConfigError, match="did you mean 'seed'"):
        config.replace(sed=4)


def test_schedule_closed_form():
    """Linear warm-up to lr, cosine to min_lr_ratio·lr: values at the landmarks."""
    warmup, total, floor = 10, 110, 0.1
    assert lr_factor(0, warmup, total, floor) == pytest.approx(0.1)
    assert lr_factor(9, warmup, total, floor) == pytest.approx(1.0)
    assert lr_factor(10, warmup, total, floor) == pytest.approx(1.0)
    assert lr_factor(60, warmup, total, floor) == pytest.approx((1 + floor) / 2)  # cos(π/2) = 0
    assert lr_factor(35, warmup, total, floor) == pytest.approx(
        floor + (1 - floor) * (1 + math.cos(math.pi / 4)) / 2
    )
    assert lr_factor(110, warmup, total, floor) == pytest.approx(floor)
    assert lr_factor(500, warmup, total, floor) == pytest.approx(floor)
    assert lr_factor(0, 0, 10, 0.0) == pytest.approx(1.0)


def test_shipped_presets_load():
    """Every preset in configs/train validates, and the CPU presets run on the CPU."""
    from pathlib import Path

    presets = sorted((Path(__file__).resolve().parents[1] / "configs" / "train").glob("*.toml"))
    names = {p.stem for p in presets}
    assert {"recall", "digits", "charlm", "recall_gpu", "digits_gpu", "charlm_gpu"} <= names
    for preset in presets:
        config = load_config(preset)
        assert config.task in preset.stem
        assert config.device == ("cuda" if preset.stem.endswith("_gpu") else "cpu")
