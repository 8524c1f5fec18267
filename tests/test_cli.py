"""The command line: help, version, thermo tables, experiments and the report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import spinformer
from spinformer import __version__
from spinformer._io import write_output_dir
from spinformer.cli import app
from spinformer.experiments import ExperimentResult, Limit, register_experiment

runner = CliRunner()


def test_help_and_version():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("thermo", "report", "run", "experiments"):
        assert command in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_thermo_square_lattice_table():
    result = runner.invoke(app, ["thermo", "square-lattice", "--size", "4", "--beta", "0.4"])
    assert result.exit_code == 0, result.output
    assert "log_partition" in result.output
    assert "14.561093023" in result.output  # published 4x4 torus value at beta = 0.4


def test_thermo_other_models_and_options():
    for args in (
        ["chain", "--size", "12", "--beta", "1", "--field", "0.3"],
        ["curie-weiss", "--size", "10", "--beta", "1"],
        ["sk", "--size", "8", "--seed", "3"],
        ["square-lattice", "--size", "3", "-o", "route='enumerate'"],
    ):
        result = runner.invoke(app, ["thermo", *args])
        assert result.exit_code == 0, result.output
    assert (
        "15.852987162"
        in runner.invoke(
            app, ["thermo", "chain", "--size", "12", "--beta", "1", "--field", "0.3"]
        ).output
    )


def test_thermo_bad_input_is_a_clear_error():
    result = runner.invoke(app, ["thermo", "square-lattice", "--beta", "-1"])
    assert result.exit_code == 2 and "beta must be positive" in result.output
    result = runner.invoke(app, ["thermo", "curie-weiss", "--size", "30"])
    assert result.exit_code == 2 and "exact enumeration needs N <= 24" in result.output
    result = runner.invoke(app, ["thermo", "chain", "--method", "nope"])
    assert result.exit_code == 2 and "--method must be one of" in result.output
    result = runner.invoke(app, ["thermo", "square-lattice", "--size", "0"])
    assert result.exit_code == 2


def test_run_experiment_and_write_results(tmp_path):
    result = runner.invoke(app, ["run", "ising_exact_checks", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["metrics"]["max_abs_error"] < 1e-9
    bad = runner.invoke(app, ["run", "ising_exact_checks", "--set", "nonsense=1"])
    assert bad.exit_code == 2 and "unknown config keys" in bad.output
    assert runner.invoke(app, ["run", "no_such_experiment"]).exit_code == 2


def test_experiments_list():
    result = runner.invoke(app, ["experiments"])
    assert result.exit_code == 0 and "ising_lattice_sweep" in result.output


def test_report_writes_self_contained_html(tmp_path):
    out = tmp_path / "rep"
    result = runner.invoke(app, ["report", "--out", str(out), "--only", "ising_exact_checks"])
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text()
    assert page.startswith("<!doctype html>") and "Exact Ising values" in page
    assert (
        "<script src" not in page
        and "http" not in page.split("<body>")[1].split("spinformer report")[0]
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ising_exact_checks"]["max_abs_error"] < 1e-9
    # a second build replaces the first atomically and leaves no staging directories behind
    assert (
        runner.invoke(app, ["report", "--out", str(out), "--only", "ising_exact_checks"]).exit_code
        == 0
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_report_rejects_unknown_sections(tmp_path):
    result = runner.invoke(app, ["report", "--out", str(tmp_path / "r"), "--only", "nope"])
    assert result.exit_code == 2 and "unknown" in result.output
    assert not (tmp_path / "r").exists()


def test_run_with_toml_preset(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text("sizes = [3, 4]\nnum_betas = 5\n")
    result = runner.invoke(
        app,
        [
            "run",
            "ising_lattice_sweep",
            "--config",
            str(preset),
            "--set",
            "beta_max=0.5",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "o" / "results.json").read_text())
    assert payload["config"] == {"sizes": [3, 4], "beta_min": 0.05, "beta_max": 0.5, "num_betas": 5}
    assert (tmp_path / "o" / "thermodynamics_vs_beta.png").stat().st_size > 1000
    missing = runner.invoke(
        app, ["run", "ising_lattice_sweep", "--config", str(tmp_path / "none.toml")]
    )
    assert missing.exit_code == 2 and "--config must be an existing TOML file" in missing.output


_CALLS: list[dict] = []


@register_experiment("_test_cli_probe", "Records its calls", limits={"count": Limit(1)})
def _probe(count: int = 3, scale: float = 1.0, seed: int = 0) -> ExperimentResult:
    _CALLS.append({"count": count, "scale": scale, "seed": seed})
    return ExperimentResult("_test_cli_probe", {"count": count}, metrics={"count": count})


def _assert_one_line_error(result, option: str) -> None:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and option in lines[0], lines


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "latin1.toml").write_bytes("count = 2 # \xe9t\xe9\n".encode("latin-1"))
    (tmp_path / "broken.toml").write_text("count = [\n")
    (tmp_path / "negative.toml").write_text("count = -1\n")
    (tmp_path / "nan.toml").write_text("scale = nan\n")
    (tmp_path / "table.toml").write_text("[count]\nvalue = 1\n")
    (tmp_path / "user.txt").write_text("precious")
    (tmp_path / "userdir").mkdir()
    (tmp_path / "userdir" / "keep.txt").write_text("precious")
    write_output_dir(tmp_path / "owned", {"old.png": b"png"}, command="spinformer run")
    (tmp_path / "owned" / "results.json").write_text("the user's, not spinformer's")
    return tmp_path


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--set", "count=-5"], "--set count=-5"),
        (["--set", "count=0"], "--set count=0"),
        (["--set", "count=2.5"], "--set count=2.5"),
        (["--set", "count=True"], "--set count=True"),
        (["--set", "scale=nan"], "--set scale=nan"),
        (["--set", "scale=inf"], "--set scale=inf"),
        (["--set", "scale=1e999"], "--set scale=1e999"),
        (["--set", "seed=-1"], "--set seed=-1"),
        (["--set", "colour=1"], "--set colour=1"),
        (["--set", "count"], "--set"),
        (["--config", "{d}/latin1.toml"], "--config"),
        (["--config", "{d}/broken.toml"], "--config"),
        (["--config", "{d}/negative.toml"], "--config"),
        (["--config", "{d}/nan.toml"], "--config"),
        (["--config", "{d}/table.toml"], "--config"),
        (["--config", "{d}/missing.toml"], "--config"),
        (["--config", "{d}"], "--config"),
        (["--out", "{d}/user.txt"], "--out"),
        (["--out", "{d}/user.txt/sub"], "--out"),
        (["--out", "{d}/userdir"], "--out"),
        (["--out", "{d}/owned"], "--out"),
    ],
)
def test_run_bad_input_is_one_line_before_any_work(bad_files, args, option):
    before = {p: p.read_bytes() for p in bad_files.rglob("*") if p.is_file()}
    _CALLS.clear()
    args = [a.format(d=bad_files) for a in args]
    result = runner.invoke(app, ["run", "_test_cli_probe", *args])
    _assert_one_line_error(result, option)
    assert _CALLS == []  # the experiment never started
    after = {p: p.read_bytes() for p in bad_files.rglob("*") if p.is_file()}
    assert after == before  # nothing written, renamed or removed


def test_run_config_and_set_are_checked_and_converted(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text("count = 4\nscale = 2\n")
    _CALLS.clear()
    result = runner.invoke(
        app, ["run", "_test_cli_probe", "--config", str(preset), "--set", "seed=7"]
    )
    assert result.exit_code == 0, result.output
    assert _CALLS == [{"count": 4, "scale": 2.0, "seed": 7}]
    assert isinstance(_CALLS[0]["scale"], float)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["thermo", "chain", "--option", "nope=1"], "--option nope=1"),
        (["thermo", "chain", "--option", "nope"], "--option"),
        (["thermo", "chain", "--coupling", "inf"], "--coupling"),
        (["thermo", "chain", "--field", "nan"], "--field"),
        (["thermo", "sk", "--seed", "-1"], "--seed"),
        (["thermo", "sk", "--seed", "1" + "0" * 400], "--seed"),
        (["mc", "sample", "chain", "--size", "0"], "--size"),
        (["mc", "sample", "chain", "--field", "nan"], "--field"),
        (["hopfield", "retrieve", "--spins", "0"], "--spins"),
        (["hopfield", "retrieve", "--corruption", "nan"], "--corruption"),
        (["hopfield", "retrieve", "--corruption", "1.5"], "--corruption"),
        (["hopfield", "retrieve", "--temperature", "-1"], "--temperature"),
        (["attention", "sweep", "--set", "num_betas=0"], "--set num_betas=0"),
        (["attention", "table", "--set", "num_tokens=-1"], "--set num_tokens=-1"),
        (["spin", "train", "--set", "lr=nan"], "--set lr=nan"),
        (["mc", "published", "--set", "sweeps=-1"], "--set sweeps=-1"),
        (["hopfield", "capacity", "--set", "corruption=(0.1, 2.0)"], "--set corruption="),
        (["run", "ising_lattice_sweep", "--set", "num_betas=-5"], "--set num_betas=-5"),
        (["run", "ising_lattice_sweep", "--set", "beta_min=nan"], "--set beta_min=nan"),
        (["run", "ising_lattice_sweep", "--set", "sizes=5"], "--set sizes=5"),
        (["run", "no_such_experiment"], "NAME"),
        (["report", "--only", "nope"], "--only"),
    ],
)
def test_every_command_reports_bad_input_as_one_line(tmp_path, args, option):
    result = runner.invoke(
        app, [*args, *(["--out", str(tmp_path / "o")] if args[0] in ("run", "report") else [])]
    )
    _assert_one_line_error(result, option)
    assert not (tmp_path / "o").exists()


def test_unknown_options_are_usage_errors_without_traceback():
    for args in (["run", "ising_exact_checks", "--bogus"], ["thermo", "chain", "--nope", "1"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "No such option" in result.output
        assert "Traceback" not in result.output


def test_report_out_is_checked_before_any_experiment(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(
        "spinformer.report.builder.render_html", lambda *a, **k: ran.append(1) or ""
    )
    user = tmp_path / "user.txt"
    user.write_text("precious")
    for out in (user, tmp_path / "user.txt" / "sub", tmp_path):
        result = runner.invoke(app, ["report", "--out", str(out), "--only", "ising_exact_checks"])
        _assert_one_line_error(result, "--out")
    assert ran == [] and user.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user.txt"]


def test_run_out_replaces_its_files_and_keeps_the_users(tmp_path):
    out = tmp_path / "o"
    assert runner.invoke(app, ["run", "_test_cli_probe", "--out", str(out)]).exit_code == 0
    (out / "mine.txt").write_text("kept")
    result = runner.invoke(app, ["run", "_test_cli_probe", "--set", "count=9", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "results.json").read_text())["metrics"] == {"count": 9}
    assert (out / "mine.txt").read_text() == "kept"
    assert sorted(p.name for p in out.iterdir()) == [
        ".spinformer-manifest.json",
        "mine.txt",
        "results.json",
    ]


_SLOW_SCRIPT = """
import sys, time
from spinformer.experiments import ExperimentResult, register_experiment

@register_experiment("_test_slow", "Waits to be interrupted", section="_test slow")
def _slow() -> ExperimentResult:
    print("running", flush=True)
    for _ in range(1200):  # short sleeps: Python checks for a pending SIGINT between them, which
        time.sleep(0.1)  # one long sleep misses when the kernel hands the signal to another thread
    return ExperimentResult("_test_slow", {})

from spinformer.cli import main
sys.argv = ["spinformer", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize(
    "command",
    [
        ["run", "_test_slow"],  # a fresh interpreter: ~4 s of CPU, mostly importing torch
        pytest.param(["report", "--only", "_test_slow"], marks=pytest.mark.slow),
    ],
)
def test_ctrl_c_during_a_run_leaves_the_previous_output(tmp_path, command):
    out = tmp_path / "o"
    write_output_dir(out, {"results.json": "previous", "index.html": "previous"}, command="test")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    env = {**os.environ, "PYTHONPATH": str(Path(spinformer.__file__).parents[1])}
    child = subprocess.Popen(
        [sys.executable, "-c", _SLOW_SCRIPT, *command, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        for line in child.stdout:  # wait until the experiment is running, then press Ctrl-C
            if "running" in line:
                break
        child.send_signal(signal.SIGINT)
        _, stderr = child.communicate(timeout=180)
    finally:
        child.kill()
    assert child.returncode == 130 and "Traceback" not in stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
