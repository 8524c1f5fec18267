"""Every experiment's recorded config reproduces its run.

``spinformer run NAME --out A`` records the config that ran in ``A/results.json``; the registry
binds every call to the function's signature, so that config is complete by construction, and
``spinformer run NAME --config A/results.json`` must give the same metrics. Each experiment runs
at its quickest settings (the small configs its own tests use); one without an entry here runs
at its report config.
"""

from __future__ import annotations

import inspect
import json
import math

import pytest
from typer.testing import CliRunner

from spinformer.cli import app
from spinformer.experiments import get_experiment, list_experiments

runner = CliRunner()

QUICK: dict[str, dict] = {
    "ising_exact_checks": {},
    "ising_lattice_sweep": {"sizes": (4,), "num_betas": 5},
    "attention_seed_table": {"num_tokens": 4, "dim": 6, "seed": 3},
    "attention_extensivity": {"betas": (0.01, 1.0, 100.0)},
    "attention_beta_sweep": {
        "num_tokens": 16, "embed_dim": 16, "num_heads": 2, "num_betas": 9, "causal": True
    },
    "attention_bifurcation": {"num_betas": 6, "num_random": 4},
    "attention_mean_field_bridges": {},
    "hopfield_capacity": {
        "num_spins": 200, "loads": (0.05, 0.3), "starts": 5, "corruption": (0.0, 0.3)
    },
    "modern_hopfield_capacity": {
        "counts": (2, 64), "betas": (0.5, 64.0), "dims": (4, 8), "queries": 8
    },
    "hopfield_landscapes": {"grid": 21, "num_spins": 100},
    "mc_published_values": {"sweeps": 40, "chains": 2},
    "mc_critical_slowing_down": {"sizes": (4, 8), "sweeps": 40, "clusters": 20, "chains": 2},
    "ergodicity": {"size": 4, "sweeps": 40, "chains": 2, "cw_size": 8, "cw_sweeps": 20},
    "large_d_response": {"dims": (16, 64), "num_fields": 10},
    "mean_field_tap_scaling": {"num_spins": 8, "epsilons": (0.1, 0.05)},
    "spin_transformer_recall": {"steps": 3, "d_model": 12, "n_heads": 2},
    "input_dependent_magnetization": {"num_spins": 4},
    "module_anatomy": {"num_tokens": 6, "dim": 8},
    "benchmark_ratios": {"batch": 1, "seq": 8, "dim": 8, "heads": 2, "repeats": 1},
    "lens_pretrained": {"models": ("minilm",), "num_tokens": 16},
    "sweep_phase_diagram": {
        "betas": (0.1, 1.0), "coupling_scales": (1.0,), "seeds": 1, "num_tokens": 6, "dim": 2
    },
    "sweep_mean_field_dimension": {
        "dims": (2, 4), "seeds": 2, "num_spins": 3, "sweeps": 20, "chains": 8
    },
    "sweep_hopfield_scaling": {"sizes": (30, 60), "loads": (0.05, 0.3), "seeds": 2, "starts": 3},
    "attention_phase_point": {"num_tokens": 6, "dim": 2, "num_random": 4},
    "vector_mean_field_error": {"num_spins": 4, "sweeps": 20, "chains": 8},
    "hopfield_retrieval_point": {"num_spins": 100, "starts": 3},
    "training_run": {"task": "recall", "model": "spin_best", "max_steps": 4},
    "training_comparison": {
        "tasks": ("recall",), "models": ("transformer", "spin_best"), "seeds": 1, "max_steps": 4
    },
    "training_footnote9": {"seeds": 1, "max_steps": 4},
}  # fmt: skip

SLOW = {"lens_pretrained"}
"""Needs the optional lens extras and loads a pretrained model."""

TIMINGS = {
    "benchmark_ratios": {
        "attention inference ratio", "attention training ratio", "spin block ratio"
    },
    "spin_transformer_recall": {"time_ratio_vs_first"},
}  # fmt: skip
"""Metrics that are wall-clock times (or their ratios): not reproducible, left out."""


def _reproducible(name: str, metrics: dict) -> dict:
    timings = TIMINGS.get(name, set())
    return {
        k: "nan" if isinstance(v, float) and math.isnan(v) else v
        for k, v in metrics.items()
        if k not in timings
        and not k.endswith("_per_s")  # throughput (training tokens per second)
        and not (name == "lens_pretrained" and k.endswith("_s"))
    }


def _ours() -> list[str]:
    return [e.name for e in list_experiments() if e.fn.__module__.startswith("spinformer.")]


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in _ours()],
)
def test_recorded_config_is_complete_and_reproduces_the_metrics(name, tmp_path, one_thread):
    experiment = get_experiment(name)
    config = QUICK.get(name, dict(experiment.report_config))
    quick = tmp_path / "quick.json"
    quick.write_text(json.dumps(config))
    first = runner.invoke(app, ["run", name, "--config", str(quick), "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    recorded = json.loads((tmp_path / "a" / "results.json").read_text())
    assert recorded["name"] == name
    assert list(recorded["config"]) == list(inspect.signature(experiment.fn).parameters)
    assert recorded["config"] == json.loads(json.dumps(experiment.bind(config)))

    again = runner.invoke(
        app,
        [
            "run",
            name,
            "--config",
            str(tmp_path / "a" / "results.json"),
            "--out",
            str(tmp_path / "b"),
        ],
    )
    assert again.exit_code == 0, again.output
    repeated = json.loads((tmp_path / "b" / "results.json").read_text())
    assert repeated["config"] == recorded["config"]
    assert _reproducible(name, repeated["metrics"]) == _reproducible(name, recorded["metrics"])


def test_every_registered_name_is_its_function_name():
    for name in _ours():
        assert get_experiment(name).fn.__name__ == name


def test_a_results_json_of_another_experiment_is_refused(tmp_path):
    out = tmp_path / "a"
    assert runner.invoke(app, ["run", "attention_seed_table", "--out", str(out)]).exit_code == 0
    result = runner.invoke(
        app, ["run", "ising_exact_checks", "--config", str(out / "results.json")]
    )
    assert result.exit_code == 2
    assert "records a run of 'attention_seed_table'" in result.stderr
