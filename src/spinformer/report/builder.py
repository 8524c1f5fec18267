"""Render experiments into one self-contained HTML page."""

from __future__ import annotations

import base64
import contextlib
import html
import inspect
import io
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spinformer._io import check_output_dir, write_output_dir
from spinformer.experiments import Experiment, ExperimentResult, list_experiments
from spinformer.report.cache import CachedBlock, ResultCache, default_cache_dir
from spinformer.report.sections import ReportSection, get_section, list_sections

__all__ = [
    "REPORT_FILES",
    "SCALES",
    "ReportResult",
    "build_report",
    "prose_html",
    "render_html",
    "report_experiments",
]

REPORT_FILES = ("index.html", "metrics.json")
"""The files a report directory holds (besides spinformer's manifest)."""


@dataclass(frozen=True)
class ReportResult:
    """Where the report was written and which experiments failed (name -> error)."""

    path: Path
    failures: dict[str, str]
    seconds: dict[str, float]


_CSS = """
:root{--fg:#1d232a;--sub:#5a6572;--line:#dde3ea;--panel:#f3f6f9;--link:#0b5394;--err:#a00}
@media (prefers-color-scheme:dark){:root{--fg:#e3e7ec;--sub:#9aa5b1;--line:#38414b;--panel:#222a33;--link:#8cb8ff;--err:#ff8a80}
body{background:#14191f}}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:1.5rem auto;padding:0 1rem;color:var(--fg);line-height:1.5;overflow-wrap:anywhere}
h1{font-size:1.8rem;margin-bottom:.2rem}h2{border-bottom:2px solid var(--line);padding-bottom:.2rem;margin-top:2.5rem}
h3{margin-top:1.8rem}.sub{color:var(--sub)}.desc p{margin:.5rem 0}.claim{font-style:italic}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem}td,th{border:1px solid var(--line);padding:.25rem .5rem;text-align:right;overflow-wrap:normal}
th{background:var(--panel)}td:first-child,th:first-child,td.t{text-align:left}
.metrics{display:flex;flex-wrap:wrap;gap:.5rem}.metric{background:var(--panel);border-radius:6px;padding:.3rem .7rem;font-size:.9rem}
figure{margin:1rem 0}img{display:block;max-width:100%;height:auto;background:#fff;border:1px solid var(--line);border-radius:4px}
.note{color:var(--link)}.err{color:var(--err)}a{color:var(--link)}
nav ol{padding-left:1.2rem}code{background:var(--panel);padding:0 .2rem;border-radius:3px}
pre.math{background:var(--panel);padding:.4rem .6rem;overflow-x:auto;white-space:pre-wrap}
"""

_SIGNIFICANT = 4
"""Significant figures of a number without an error bar."""


def _format(value: Any) -> str:
    """A table or metric value as text: floats to 4 significant figures, ``None`` as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value == 0:
            return "0"
        if abs(value) < 1e-3 or abs(value) >= 1e6:
            mantissa, exponent = f"{value:.{_SIGNIFICANT - 1}e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}×10<sup>{int(exponent)}</sup>"
        return f"{value:.{_SIGNIFICANT}g}"
    return html.escape(str(value))


def _format_error(value: Any, error: Any) -> str:
    """``value ± error`` with the value rounded to the error's two leading digits."""
    if not isinstance(value, (int, float)) or not isinstance(error, (int, float)):
        return f"{_format(value)} ± {_format(error)}"
    if not (math.isfinite(value) and math.isfinite(error)) or error <= 0:
        return f"{_format(value)} ± {_format(error)}"
    decimals = max(0, 1 - math.floor(math.log10(error)))
    if decimals > 8:
        return f"{_format(float(value))} ± {_format(float(error))}"
    return f"{value:.{decimals}f} ± {error:.{decimals}f}"


_ERROR_SUFFIXES = (" err", "_err", " error", "_error")


def _pair_errors(keys: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The keys to show, and for each shown key its error-bar key (``"x"`` with ``"x err"``)."""
    errors: dict[str, str] = {}
    for key in keys:
        for suffix in _ERROR_SUFFIXES:
            if key + suffix in keys:
                errors[key] = key + suffix
                break
    hidden = set(errors.values())
    return [k for k in keys if k not in hidden], errors


_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc):`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]+>`_")


def _inline(text: str) -> str:
    """Docstring inline markup as HTML: roles show their last name, literals become code."""
    text = html.escape(text, quote=False)
    text = _ROLE.sub(lambda m: f"<code>{m.group(1).split('.')[-1]}</code>", text)
    text = _LITERAL.sub(r"<code>\1</code>", text)
    text = _LINK.sub(r"\1", text)
    return text


def prose_html(docstring: str) -> str:
    """A docstring as HTML paragraphs: hard-wrapped lines joined, bullet lists kept as lists,
    ``.. math::`` blocks shown as preformatted formulas, and inline markup removed."""
    blocks = re.split(r"\n\s*\n", inspect.cleandoc(docstring).strip())
    parts: list[str] = []
    for block in blocks:
        lines = block.splitlines()
        if not lines:
            continue
        first = lines[0].strip()
        if first.startswith(".. math::"):
            formula = " ".join(
                [first.removeprefix(".. math::").strip()] + [ln.strip() for ln in lines[1:]]
            )
            parts.append(f"<pre class='math'>{html.escape(formula.strip())}</pre>")
        elif first.startswith(("- ", "* ")):
            items: list[list[str]] = []
            for line in lines:
                stripped = line.strip()
                if stripped.startswith(("- ", "* ")):
                    items.append([stripped[2:]])
                elif items:
                    items[-1].append(stripped)
            parts.append(
                "<ul>" + "".join(f"<li>{_inline(' '.join(i))}</li>" for i in items) + "</ul>"
            )
        else:
            parts.append(f"<p>{_inline(' '.join(ln.strip() for ln in lines))}</p>")
    return "".join(parts)


def _figure_png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _align(value: Any) -> str:
    """Text cells align left, numbers right (the default)."""
    return " class='t'" if isinstance(value, str) else ""


def _table_html(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "<p class='sub'>(empty)</p>"
    columns, errors = _pair_errors(list(dict.fromkeys(k for row in rows for k in row)))
    head = "".join(f"<th>{html.escape(c)}{' ± err' if c in errors else ''}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{_align(row.get(c))}>{_format_error(row.get(c), row.get(errors[c])) if c in errors and row.get(errors[c]) is not None else _format(row.get(c))}</td>"
            for c in columns
        )
        + "</tr>"
        for row in rows
    )
    return f"<div class='scroll'><table><tr>{head}</tr>{body}</table></div>"


def _metrics_html(metrics: dict[str, Any]) -> str:
    keys, errors = _pair_errors(list(metrics))
    chips = []
    for key in keys:
        value = (
            _format_error(metrics[key], metrics[errors[key]])
            if key in errors
            else _format(metrics[key])
        )
        chips.append(f"<span class='metric'><b>{html.escape(key)}</b> = {value}</span>")
    return f"<div class='metrics'>{''.join(chips)}</div>"


def _experiment_html(
    experiment: Experiment, result: ExperimentResult | None, seconds: float, error: str | None
) -> str:
    parts = [f"<h3 id='{experiment.name}'>{html.escape(experiment.title)}</h3>"]
    parts.append(
        f"<p class='sub'><code>spinformer run {experiment.name}</code> · {seconds:.1f} s</p>"
    )
    parts.append(f"<div class='desc'>{prose_html(experiment.description)}</div>")
    if error is not None or result is None:
        parts.append(
            f"<p class='err'>This experiment failed: {html.escape(error or 'no result')}</p>"
        )
        return "\n".join(parts)
    if result.metrics:
        parts.append(_metrics_html(result.metrics))
    for note in result.notes:
        parts.append(f"<p class='note'>{_inline(note)}</p>")
    for name, rows in result.tables.items():
        parts.append(f"<h4>{html.escape(name)}</h4>{_table_html(rows)}")
    for name, figure in result.figures.items():
        parts.append(
            f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{_figure_png(figure)}'/></figure>"
        )
    return "\n".join(parts)


Block = tuple[Experiment, ExperimentResult | None, float, str | None]


def _section_for(title: str) -> ReportSection:
    """The registered section with ``title``, or an ad-hoc one (no claim) for an unknown title."""
    for section in list_sections():
        if section.title == title:
            return section
    name = re.sub(r"\W+", "_", title).strip("_") or "other"
    return ReportSection(name, title, "", 1000)


def render_html(
    blocks: Sequence[Block],
    version: str,
    unavailable: Mapping[str, str] | None = None,
    machine: str | None = None,
    cached: Mapping[str, str] | None = None,
) -> str:
    """The whole page for already-run experiments (``(experiment, result, seconds, error)``).

    ``unavailable`` maps section names that cannot be built here to the reason (shown in place
    of their results); ``machine`` names the machine that built the page; ``cached`` maps
    experiment names to blocks rendered by an earlier, identically stamped run.
    """
    grouped: dict[str, tuple[ReportSection, list[str]]] = {}
    for section in list_sections():
        if unavailable and section.name in unavailable:
            grouped[section.name] = (section, [])
    for experiment, result, seconds, error in blocks:
        section = _section_for(experiment.section or "Other")
        grouped.setdefault(section.name, (section, []))[1].append(
            cached[experiment.name]
            if cached and experiment.name in cached
            else _experiment_html(experiment, result, seconds, error)
        )
    ordered = sorted(grouped.values(), key=lambda item: (item[0].order, item[0].name))
    nav = "".join(f"<li><a href='#{s.name}'>{html.escape(s.title)}</a></li>" for s, _ in ordered)
    body = []
    for section, items in ordered:
        body.append(f"<section id='{section.name}'><h2>{html.escape(section.title)}</h2>")
        if section.claim:
            body.append(f"<p class='claim'>{html.escape(section.claim)}</p>")
        if unavailable and section.name in unavailable:
            body.append(
                f"<p class='note'>Not built here: {html.escape(unavailable[section.name])}</p>"
            )
        body.append("\n".join(items) + "</section>")
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    built_on = f" on {html.escape(machine)}" if machine else ""
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<meta name='color-scheme' content='light dark'><title>spinformer report</title>"
        f"<style>{_CSS}</style></head><body><h1>spinformer report</h1>"
        "<p class='sub'>A transformer's attention is the Boltzmann distribution of a spin system; its output is a "
        f"magnetization. Every number below is computed by a registered experiment. spinformer {html.escape(version)}, "
        f"built {stamp}{built_on}.</p><nav><h2>Contents</h2><ol>{nav}</ol></nav>{''.join(body)}</body></html>"
    )


SCALES = ("quick", "full")
"""``quick``: each experiment's ``report_config`` (the default, minutes in all); ``full``: the
experiment's own defaults (the sizes ``spinformer run`` uses)."""


def report_experiments(
    only: Sequence[str] | None = None, sections: Sequence[str] | None = None
) -> tuple[list[Experiment], dict[str, str]]:
    """The experiments a report runs and the unavailable sections (name -> reason).

    ``sections`` restricts to registered section names; ``only`` to experiment names or section
    titles. Experiments of a section whose availability check fails are not run.

    Raises:
        ValueError: an unknown section name or ``only`` entry.
    """
    experiments = [e for e in list_experiments() if e.section is not None]
    if sections:
        for name in sections:
            get_section(name)
        titles = {get_section(name).title for name in sections}
        experiments = [e for e in experiments if e.section in titles]
    if only:
        wanted = set(only)
        known = {e.name for e in experiments} | {e.section for e in experiments}
        unknown = wanted - known
        if unknown:
            raise ValueError(
                f"only must name report experiments or sections, unknown: {sorted(unknown)}"
            )
        experiments = [e for e in experiments if e.name in wanted or e.section in wanted]
    unavailable: dict[str, str] = {}
    for section in list_sections():
        if sections and section.name not in sections:
            continue
        if only and section.title not in {e.section for e in experiments}:
            continue
        reason = section.available()
        if reason is not None:
            unavailable[section.name] = reason
    skipped = {get_section(n).title for n in unavailable}
    return [e for e in experiments if e.section not in skipped], unavailable


def build_report(
    out_dir: str | Path = "report",
    only: Sequence[str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    on_progress: Callable[[str], None] | None = None,
    sections: Sequence[str] | None = None,
    scale: str = "quick",
    cache_dir: str | Path | None = None,
) -> ReportResult:
    """Run the report's experiments and write ``out_dir/index.html`` (+ ``metrics.json``).

    Args:
        out_dir: destination directory: new, empty, or one spinformer wrote before (see
            :func:`spinformer._io.write_output_dir`). Each file is replaced atomically; files
            spinformer did not write are never touched.
        only: restrict to these experiment names or section titles.
        overrides: per-experiment config overrides, ``{name: {key: value}}``.
        on_progress: called with each experiment's name before it runs.
        sections: restrict to these section names (see :func:`list_sections`).
        scale: ``"quick"`` (each experiment's report config; the default) or ``"full"`` (the
            experiment's own defaults, as ``spinformer run`` uses them).
        cache_dir: where sections registered with ``cached=True`` keep stamped results
            (default :func:`spinformer.report.cache.default_cache_dir`); a result is reused only
            when it was made by the same code and config.

    Returns the path of ``index.html`` and the failures. A failing experiment is shown as an
    error in the page (and recorded in ``metrics.json``) rather than aborting the whole report.

    Raises:
        ValueError: before any experiment runs, for an unknown ``only`` or ``sections`` entry,
            ``overrides`` name or ``scale``, a bad override value, or an ``out_dir`` that cannot
            take the report.
    """
    from spinformer import __version__
    from spinformer.experiments.benchmarks import machine_description

    if scale not in SCALES:
        raise ValueError(f"scale must be one of {list(SCALES)}, got {scale!r}")
    experiments, unavailable = report_experiments(only, sections)
    overrides = dict(overrides or {})
    stray = sorted(set(overrides) - {e.name for e in list_experiments() if e.section is not None})
    if stray:
        raise ValueError(f"overrides must name report experiments, unknown: {stray}")
    configs = {}
    for experiment in experiments:
        base = dict(experiment.report_config) if scale == "quick" else {}
        try:
            configs[experiment.name] = experiment.bind(
                {**base, **overrides.get(experiment.name, {})}
            )
        except ValueError as err:
            raise ValueError(f"overrides[{experiment.name!r}]: {err}") from None
    out = check_output_dir(out_dir, "out_dir", REPORT_FILES)
    blocks = []
    metrics: dict[str, Any] = {}
    cache = ResultCache(default_cache_dir() if cache_dir is None else cache_dir)
    cached_titles = {s.title for s in list_sections() if s.cached}
    reused: dict[str, str] = {}
    for experiment in experiments:
        if on_progress is not None:
            on_progress(experiment.name)
        config = configs[experiment.name]
        use_cache = experiment.section in cached_titles
        hit = cache.load(experiment.name, config) if use_cache else None
        if hit is not None:
            reused[experiment.name] = hit.html
            metrics[experiment.name] = hit.metrics
            blocks.append((experiment, None, hit.seconds, None))
            continue
        start = time.perf_counter()
        try:
            result, error = experiment.run(config), None
            metrics[experiment.name] = result.metrics
        except Exception as err:  # shown in the page; the report goes on
            result, error = None, f"{type(err).__name__}: {err}"
            metrics[experiment.name] = {"error": error}
        seconds = time.perf_counter() - start
        blocks.append((experiment, result, seconds, error))
        if use_cache and result is not None:
            block = _experiment_html(experiment, result, seconds, None)
            reused[experiment.name] = block  # rendered once, for the page and the cache
            with contextlib.suppress(OSError):  # an unwritable cache only costs a rerun
                cache.store(experiment.name, config, CachedBlock(block, result.metrics, seconds))
    page = render_html(blocks, __version__, unavailable, machine_description(), reused)
    write_output_dir(
        out,
        dict(zip(REPORT_FILES, (page, json.dumps(metrics, indent=2, default=str)), strict=True)),
        command="spinformer report",
        name="out_dir",
    )
    failures = {e.name: err for e, _, _, err in blocks if err is not None}
    seconds = {e.name: t for e, _, t, _ in blocks}
    return ReportResult(out / "index.html", failures, seconds)
