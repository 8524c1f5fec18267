"""Report builder: figures inline, failures shown (not fatal), nothing half-written."""

from __future__ import annotations

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
