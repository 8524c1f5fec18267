"""Render experiments into one self-contained HTML page."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spinformer._io import check_output_dir, write_output_dir
from spinformer.experiments import Experiment, ExperimentResult, list_experiments

__all__ = ["REPORT_FILES", "ReportResult", "build_report", "render_html"]

REPORT_FILES = ("index.html", "metrics.json")
"""The files a report directory holds (besides spinformer's manifest)."""


@dataclass(frozen=True)
class ReportResult:
    """Where the report was written and which experiments failed (name -> error)."""

    path: Path
    failures: dict[str, str]
    seconds: dict[str, float]


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2rem auto;padding:0 1rem;color:#1d232a;line-height:1.5}
h1{font-size:1.8rem;margin-bottom:.2rem}h2{border-bottom:2px solid #dde3ea;padding-bottom:.2rem;margin-top:2.5rem}
h3{margin-top:1.8rem}.sub{color:#5a6572}.desc{white-space:pre-wrap;color:#2f3a45}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}td,th{border:1px solid #dde3ea;padding:.25rem .6rem;text-align:right}
th{background:#f3f6f9}td:first-child,th:first-child{text-align:left}
.metrics{display:flex;flex-wrap:wrap;gap:.5rem}.metric{background:#f3f6f9;border-radius:6px;padding:.3rem .7rem;font-size:.9rem}
img{max-width:100%;border:1px solid #eef1f4;border-radius:4px}.note{color:#0b5394}.err{color:#a00}
nav a{margin-right:1rem}code{background:#f3f6f9;padding:0 .2rem}
"""


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.6e}"
        return f"{value:.10g}"
    return html.escape(str(value))


def _figure_png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _table_html(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "<p class='sub'>(empty)</p>"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_format(row.get(c, ''))}</td>" for c in columns) + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _experiment_html(
    experiment: Experiment, result: ExperimentResult | None, seconds: float, error: str | None
) -> str:
    parts = [f"<h3 id='{experiment.name}'>{html.escape(experiment.title)}</h3>"]
    parts.append(
        f"<p class='sub'><code>spinformer run {experiment.name}</code> · {seconds:.1f} s</p>"
    )
    parts.append(f"<p class='desc'>{html.escape(experiment.description)}</p>")
    if error is not None or result is None:
        parts.append(
            f"<p class='err'>This experiment failed: {html.escape(error or 'no result')}</p>"
        )
        return "\n".join(parts)
    if result.metrics:
        chips = "".join(
            f"<span class='metric'><b>{html.escape(k)}</b> = {_format(v)}</span>"
            for k, v in result.metrics.items()
        )
        parts.append(f"<div class='metrics'>{chips}</div>")
    for note in result.notes:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    for name, rows in result.tables.items():
        parts.append(f"<h4>{html.escape(name)}</h4>{_table_html(rows)}")
    for name, figure in result.figures.items():
        parts.append(
            f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{_figure_png(figure)}'/></figure>"
        )
    return "\n".join(parts)


def render_html(
    blocks: Sequence[tuple[Experiment, ExperimentResult | None, float, str | None]], version: str
) -> str:
    """The whole page for already-run experiments (``(experiment, result, seconds, error)``)."""
    sections: dict[str, list[str]] = {}
    for experiment, result, seconds, error in blocks:
        sections.setdefault(experiment.section or "Other", []).append(
            _experiment_html(experiment, result, seconds, error)
        )
    nav = "".join(f"<a href='#s{i}'>{html.escape(title)}</a>" for i, title in enumerate(sections))
    body = "".join(
        f"<h2 id='s{i}'>{html.escape(title)}</h2>" + "\n".join(items)
        for i, (title, items) in enumerate(sections.items())
    )
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>spinformer report</title>"
        f"<style>{_CSS}</style></head><body><h1>spinformer report</h1>"
        "<p class='sub'>A transformer's attention is the Boltzmann distribution of a spin system; its output is a "
        f"magnetization. Every number below is computed by a registered experiment. spinformer {html.escape(version)}, "
        f"built {stamp}.</p><nav>{nav}</nav>{body}</body></html>"
    )


def build_report(
    out_dir: str | Path = "report",
    only: Sequence[str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> ReportResult:
    """Run the report's experiments and write ``out_dir/index.html`` (+ ``metrics.json``).

    Args:
        out_dir: destination directory: new, empty, or one spinformer wrote before (see
            :func:`spinformer._io.write_output_dir`). Each file is replaced atomically; files
            spinformer did not write are never touched.
        only: restrict to these experiment names or section titles.
        overrides: per-experiment config overrides, ``{name: {key: value}}``.
        on_progress: called with each experiment's name before it runs.

    Returns the path of ``index.html`` and the failures. A failing experiment is shown as an error in the page
    (and recorded in ``metrics.json``) rather than aborting the whole report.

    Raises:
        ValueError: before any experiment runs, for an unknown ``only`` entry or ``overrides``
            name, a bad override value, or an ``out_dir`` that cannot take the report.
    """
    from spinformer import __version__

    experiments = [e for e in list_experiments() if e.section is not None]
    if only:
        wanted = set(only)
        known = {e.name for e in experiments} | {e.section for e in experiments}
        unknown = wanted - known
        if unknown:
            raise ValueError(
                f"only must name report experiments or sections, unknown: {sorted(unknown)}"
            )
        experiments = [e for e in experiments if e.name in wanted or e.section in wanted]
    overrides = dict(overrides or {})
    stray = sorted(set(overrides) - {e.name for e in list_experiments() if e.section is not None})
    if stray:
        raise ValueError(f"overrides must name report experiments, unknown: {stray}")
    configs = {}
    for experiment in experiments:
        try:
            configs[experiment.name] = experiment.bind(
                {**experiment.report_config, **overrides.get(experiment.name, {})}
            )
        except ValueError as err:
            raise ValueError(f"overrides[{experiment.name!r}]: {err}") from None
    out = check_output_dir(out_dir, "out_dir", REPORT_FILES)
    blocks = []
    metrics: dict[str, Any] = {}
    for experiment in experiments:
        if on_progress is not None:
            on_progress(experiment.name)
        start = time.perf_counter()
        try:
            result, error = experiment.fn(**configs[experiment.name]), None
            metrics[experiment.name] = result.metrics
        except Exception as err:  # shown in the page; the report goes on
            result, error = None, f"{type(err).__name__}: {err}"
            metrics[experiment.name] = {"error": error}
        blocks.append((experiment, result, time.perf_counter() - start, error))
    page = render_html(blocks, __version__)
    write_output_dir(
        out,
        dict(zip(REPORT_FILES, (page, json.dumps(metrics, indent=2, default=str)), strict=True)),
        command="spinformer report",
        name="out_dir",
    )
    failures = {e.name: err for e, _, _, err in blocks if err is not None}
    seconds = {e.name: t for e, _, t, _ in blocks}
    return ReportResult(out / "index.html", failures, seconds)
