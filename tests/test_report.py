"""Report builder: figures inline, failures shown (not fatal), nothing half-written."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from spinformer.experiments import ExperimentResult, register_experiment
from spinformer.experiments._plot import new_figure
from spinformer.report import build_report


@register_experiment("_test_failing", "A failing experiment", section="_test section")
def _failing() -> ExperimentResult:
    raise RuntimeError("deliberate")


@register_experiment("_test_figure", "A figure", section="_test section")
def _figure(points: int = 3) -> ExperimentResult:
    fig, ax = new_figure()
    ax.plot(range(points))
    return ExperimentResult(
        "_test_figure", {"points": points}, metrics={"points": points}, figures={"line": fig}
    )


def test_failures_are_reported_not_fatal(tmp_path):
    result = build_report(
        tmp_path / "r", only=["_test section"], overrides={"_test_figure": {"points": 5}}
    )
    assert result.failures == {"_test_failing": "RuntimeError: deliberate"}
    page = result.path.read_text()
    assert "deliberate" in page and "data:image/png;base64," in page


def test_interrupted_build_leaves_previous_report(tmp_path, monkeypatch):
    out = tmp_path / "r"
    build_report(out, only=["_test_figure"])
    before = (out / "index.html").read_text()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("spinformer.report.builder.render_html", boom)
    with pytest.raises(KeyboardInterrupt):
        build_report(out, only=["_test_figure"])
    assert (out / "index.html").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_report_never_deletes_hides_or_replaces_user_files(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.csv").write_text("precious")
    with pytest.raises(ValueError, match=r"out_dir .* non-empty directory that spinformer did not"):
        build_report(mine, only=["_test_failing"])
    assert sorted(p.name for p in mine.iterdir()) == ["data.csv"]
    single = tmp_path / "notes.txt"
    single.write_text("precious")
    with pytest.raises(ValueError, match="out_dir must be a directory"):
        build_report(single, only=["_test_failing"])
    assert single.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mine",
        "notes.txt",
    ]  # no '.notes.txt-old'
    out = tmp_path / "r"
    build_report(out, only=["_test_failing"])
    (out / "my-notes.md").write_text("kept")
    build_report(out, only=["_test_failing"])
    assert (out / "my-notes.md").read_text() == "kept"
    assert sorted(p.name for p in out.iterdir()) == [
        ".spinformer-manifest.json",
        "index.html",
        "metrics.json",
        "my-notes.md",
    ]


def test_bad_overrides_fail_before_any_experiment_runs(tmp_path):
    ran = []
    with pytest.raises(ValueError, match=r"overrides\['_test_figure'\]: points must be an integer"):
        build_report(
            tmp_path / "r",
            only=["_test section"],
            overrides={"_test_figure": {"points": "many"}},
            on_progress=ran.append,
        )
    with pytest.raises(ValueError, match="overrides must name report experiments"):
        build_report(tmp_path / "r", overrides={"nope": {}}, on_progress=ran.append)
    assert ran == [] and not (tmp_path / "r").exists()


def _build_reports(out: str, rounds: int) -> None:
    for _ in range(rounds):
        build_report(out, only=["_test_failing"])


def test_concurrent_reports_into_one_directory_both_succeed(tmp_path):
    out = tmp_path / "r"
    fork = multiprocessing.get_context("fork")
    builders = [fork.Process(target=_build_reports, args=(str(out), 15)) for _ in range(2)]
    for process in builders:
        process.start()
    for process in builders:
        process.join(120)
    assert [p.exitcode for p in builders] == [0, 0]
    assert json.loads((out / "metrics.json").read_text()) == {
        "_test_failing": {"error": "RuntimeError: deliberate"}
    }
    assert (out / "index.html").read_text().endswith("</html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no staging directories left
