"""Sweeps: the local executor, rows on disk, resume by config hash, failures, bad input, figure.

The points run ``sweep_probe``, an experiment registered here whose metric has a closed form
(x², and x² + seed), so every row is checked against arithmetic, not against the engine. Workers
are spawned processes that import this module (its directory is on their ``sys.path``).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import spinformer
from spinformer.cli import app
from spinformer.experiments import ExperimentResult, register_experiment
from spinformer.sweep import config_hash, expand_grid, sweep, sweep_figure

runner = CliRunner()


@register_experiment("sweep_probe", "A closed-form probe for the sweep engine")
def sweep_probe(
    x: float = 0.0, fail_at: float = 99.0, sleep: float = 0.0, seed: int = 0
) -> ExperimentResult:
    """square = x², shifted = x² + seed; raises at x == fail_at; sleeps ``sleep`` seconds."""
    if x == fail_at:
        raise ValueError(f"probe failure at x = {x}")
    time.sleep(sleep)
    return ExperimentResult(
        "sweep_probe", {"x": x, "seed": seed}, metrics={"square": x * x, "shifted": x * x + seed}
    )


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_local_rows_closed_form_and_files(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = sweep(
        "sweep_probe", {"x": [0.5, 1.5, 2.0]}, seeds=2, fixed={"fail_at": 2.0}, out=out,
        workers=2,
    )  # fmt: skip
    assert len(result.rows) == 6
    assert [r["point"] for r in result.rows] == list(range(6))
    ok = [r for r in result.rows if r["status"] == "ok"]
    assert len(ok) == 4
    for row in ok:
        assert row["square"] == row["x"] ** 2
        assert row["shifted"] == row["x"] ** 2 + row["seed"]
    failed = result.failures
    assert [r["x"] for r in failed] == [2.0, 2.0]
    assert all("probe failure at x = 2.0" in r["error"] for r in failed)
    records = _jsonl(out / "results.jsonl")
    assert sorted(r["point"] for r in records) == list(range(6))
    assert {r["config_hash"] for r in records} == {
        config_hash("sweep_probe", p) for p in expand_grid("sweep_probe", {"x": [0.5, 1.5, 2.0]}, 2,
                                                           {"fail_at": 2.0})
    }  # fmt: skip
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 7 and "square" in csv_lines[0] and "status" in csv_lines[0]
    assert (out / "sweep.png").stat().st_size > 0
    assert json.loads((out / "sweep.json").read_text())["grid"] == {"x": [0.5, 1.5, 2.0]}


def test_interrupt_then_resume_computes_only_missing_points(tmp_path: Path) -> None:
    out = tmp_path / "run"
    grid = {"x": [1.0, 2.0, 3.0, 4.0, 5.0]}
    seen: list[dict] = []

    def interrupt_after_two(row: dict) -> None:
        seen.append(row)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep("sweep_probe", grid, out=out, workers=1, on_row=interrupt_after_two)
    first = _jsonl(out / "results.jsonl")
    assert len(first) == 2  # every finished row is on disk
    assert len((out / "results.csv").read_text().splitlines()) == 3
    with open(out / "results.jsonl", "a") as handle:  # a line cut by a crash
        handle.write('{"point": 4, "config_hash": "trunc')
    with pytest.raises(ValueError, match="already holds a sweep"):
        sweep("sweep_probe", grid, out=out)
    with pytest.raises(ValueError, match="another sweep"):
        sweep("sweep_probe", {"x": [1.0]}, out=out, resume=True)
    computed: list[dict] = []
    result = sweep("sweep_probe", grid, out=out, workers=2, resume=True, on_row=computed.append)
    assert result.skipped == 2
    assert sorted(r["x"] for r in computed) == sorted(
        set(grid["x"]) - {r["config"]["x"] for r in first}
    )
    assert [r["square"] for r in result.rows] == [x * x for x in grid["x"]]
    records = _jsonl(out / "results.jsonl")  # the cut line is gone, no point is there twice
    assert len(records) == 5 and len({r["config_hash"] for r in records}) == 5
    assert records[:2] == first  # finished rows are kept as they were, not recomputed


def test_resume_reruns_failed_points_only(tmp_path: Path) -> None:
    out = tmp_path / "run"
    grid = {"x": [1.0, 3.0]}
    sweep("sweep_probe", grid, fixed={"fail_at": 3.0}, out=out, workers=1)
    # the same grid and fixed values: the failed point runs again and fails again
    computed: list[dict] = []
    result = spinformer.sweep(  # the package is callable: spinformer.sweep(...) is the API
        "sweep_probe", grid, fixed={"fail_at": 3.0}, out=out, workers=1, resume=True,
        on_row=computed.append,
    )  # fmt: skip
    assert [r["x"] for r in computed] == [3.0]
    assert [r["status"] for r in result.rows] == ["ok", "failed"]


@pytest.mark.slow
def test_sigint_leaves_finished_rows_and_resume_completes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    code = (
        "import test_sweep\n"
        "from spinformer.sweep import sweep\n"
        f"sweep('sweep_probe', {{'x': [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}}, fixed={{'sleep': 0.5}},"
        f" out={str(out)!r}, workers=1)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    jsonl = out / "results.jsonl"
    while time.monotonic() < deadline:
        if jsonl.exists() and jsonl.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0, stderr.decode()
    assert b"KeyboardInterrupt" in stderr
    finished = _jsonl(jsonl)
    assert 1 <= len(finished) < 6
    assert len((out / "results.csv").read_text().splitlines()) == len(finished) + 1
    result = sweep(
        "sweep_probe", {"x": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}, fixed={"sleep": 0.5}, out=out,
        workers=2, resume=True,
    )  # fmt: skip
    assert result.skipped == len(finished)
    assert [r["square"] for r in result.rows] == [x * x for x in (1, 2, 3, 4, 5, 6)]


def test_figure_line_is_seed_mean_and_heatmap_is_the_grid() -> None:
    rows = [
        {"status": "ok", "x": x, "seed": s, "shifted": x * x + s}
        for x in (1.0, 2.0, 3.0)
        for s in (0, 1, 2)
    ]
    fig = sweep_figure(rows, ("x", "seed"), metric="shifted")
    line = fig.axes[0].lines[0]
    assert list(line.get_xdata()) == [1.0, 2.0, 3.0]
    assert list(line.get_ydata()) == [x * x + 1.0 for x in (1.0, 2.0, 3.0)]  # mean of seeds 0,1,2
    grid_rows = [
        {"status": "ok", "x": x, "y": y, "m": 10 * x + y} for x in (1, 2, 3) for y in (5, 7)
    ]
    heat = sweep_figure(grid_rows, ("x", "y"), metric="m")
    image = heat.axes[0].images[0].get_array()
    assert image.shape == (2, 3)  # rows: y, columns: x
    assert image[1][2] == 37 and image[0][0] == 15
    assert sweep_figure(rows, ("x",), metric=None) is None
    missing = sweep_figure(grid_rows[:-1], ("x", "y"), metric="m").axes[0].images[0]
    assert math.isnan(missing.get_array().filled(math.nan)[1][2])  # an unrun point stays blank


def test_api_bad_input_names_the_argument(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="did you mean 'sweep_probe'"):
        sweep("sweep_prob", {"x": [1.0]})
    with pytest.raises(ValueError, match=r"grid key 'xx'.*did you mean 'x'"):
        sweep("sweep_probe", {"xx": [1.0]})
    with pytest.raises(ValueError, match="x must be a finite number, got 'a'"):
        sweep("sweep_probe", {"x": [1.0, "a"]})
    with pytest.raises(ValueError, match="seed must be"):
        sweep("sweep_probe", {"seed": [-1]})
    with pytest.raises(ValueError, match="non-empty list"):
        sweep("sweep_probe", {"x": []})
    with pytest.raises(ValueError, match="seeds must be a positive integer"):
        sweep("sweep_probe", {"x": [1.0]}, seeds=0)
    with pytest.raises(ValueError, match="already sweeps 'seed'"):
        sweep("sweep_probe", {"seed": [1]}, seeds=2)
    with pytest.raises(ValueError, match="executor must be one of"):
        sweep("sweep_probe", {"x": [1.0]}, executor="slurm")
    with pytest.raises(ValueError, match="resume needs out"):
        sweep("sweep_probe", {"x": [1.0]}, resume=True)
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(ValueError, match="did not write"):
        sweep("sweep_probe", {"x": [1.0]}, out=tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["mine.txt"]


def test_missing_extra_names_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from spinformer.sweep import make_executor

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda n, *a: None if n in ("ray", "distributed") else real(n, *a),
    )
    with pytest.raises(ValueError, match=r"pip install 'ray'"):
        make_executor("ray")
    with pytest.raises(ValueError, match=r"pip install 'dask\[distributed\]'"):
        make_executor("dask")


def test_cli_bad_input_fails_before_any_point(tmp_path: Path) -> None:
    out = tmp_path / "new"
    cases = [
        (["sweep", "sweep_prob", "--grid", "x=1", "--out", str(out)], "did you mean 'sweep_probe'"),
        (["sweep", "sweep_probe", "--grid", "xx=1,2", "--out", str(out)], "did you mean 'x'"),
        (["sweep", "sweep_probe", "--grid", "x=1,abc", "--out", str(out)], "--grid x"),
        (["sweep", "sweep_probe", "--grid", "x", "--out", str(out)], "key=v1,v2"),
        (["sweep", "sweep_probe", "--grid", "x=1", "--seeds", "0", "--out", str(out)], "--seeds"),
        (["sweep", "sweep_probe", "--grid", "x=1", "--executor", "mpi", "--out", str(out)],
         "--executor must be one of"),
        (["sweep", "sweep_probe", "--grid", "x=1", "--set", "sleep=-", "--out", str(out)], "--set sleep"),
        (["sweep", "sweep_probe", "--grid", "x=1", "--executor", "dask", "--address",
          "tcp://127.0.0.1:9", "--out", str(out)], "--address"),
        (["sweep", "sweep_probe", "--grid", "x=1", "--executor", "ray", "--address",
          "127.0.0.1:9", "--out", str(out)], "cannot reach the Ray cluster"),
    ]  # fmt: skip
    for args, expected in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert expected in " ".join(result.output.split()), (args, result.output)
        assert not out.exists()


def test_cli_runs_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["sweep", "sweep_probe", "--grid", "x=1,2", "--seeds", "2", "--out", str(out)]
    first = runner.invoke(app, [*args, "--workers", "2"])
    assert first.exit_code == 0, first.output
    assert "4 rows (0 resumed, 0 failed)" in first.output
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "4 rows (4 resumed, 0 failed)" in resumed.output
    failing = runner.invoke(
        app, ["sweep", "sweep_probe", "--grid", "x=1,2", "--set", "fail_at=2", "--out",
              str(tmp_path / "f")],
    )  # fmt: skip
    assert failing.exit_code == 1 and "probe failure" in failing.output
