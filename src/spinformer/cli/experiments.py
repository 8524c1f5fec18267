"""``spinformer run``, ``spinformer experiments`` and ``spinformer report``.

Everything the user gave is checked before an experiment runs: the experiment name, the
``--config`` file (readable, UTF-8, TOML), every config value against the experiment's signature
and limits (:meth:`spinformer.experiments.Experiment.bind`), and that ``--out`` can take the
output (:func:`spinformer._io.check_output_dir`). Output is written through
:func:`spinformer._io.write_output_dir`: each file atomically, nothing spinformer did not write
touched.
"""

from __future__ import annotations

import io
import json
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from spinformer._io import check_output_dir, write_output_dir
from spinformer.cli._app import app, console, fail, parse_overrides


@app.command("experiments")
def list_command() -> None:
    """List the registered experiments (name, report section, title)."""
    from spinformer.experiments import list_experiments

    table = Table(title="experiments")
    for column in ("name", "section", "title"):
        table.add_column(column)
    for e in list_experiments():
        table.add_row(e.name, e.section or "-", e.title)
    console.print(table)


@app.command("run")
def run_command(
    name: Annotated[str, typer.Argument(help="Experiment name (see `spinformer experiments`).")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Config override key=value (repeatable)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Directory for figures (PNG) and results.json: new, empty, or one spinformer wrote."
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="TOML preset (e.g. configs/NAME.toml), or the results.json of an earlier run"
            " (its recorded config); --set overrides it."
        ),
    ] = None,
) -> None:
    """Run one experiment and print its metrics and tables.

    Example: spinformer run ising_lattice_sweep --config configs/ising_lattice_sweep_cpu.toml --set num_betas=21

    Example: spinformer run hopfield_capacity --config runs/cap/results.json (the same run again)
    """
    from spinformer.experiments import get_experiment, run_experiment

    try:
        experiment = get_experiment(name)
    except ValueError as err:
        fail(f"NAME: {err}")
    sources: dict[str, str] = {}
    overrides: dict[str, Any] = {}
    if config is not None:
        preset = _read_preset(config, name)
        overrides.update(preset)
        sources.update(dict.fromkeys(preset, f"--config {config}"))
    for item in set_ or []:
        sources[item.partition("=")[0].strip()] = f"--set {item}"
    overrides.update(parse_overrides(set_))
    try:
        bound = experiment.bind(overrides)
    except ValueError as err:
        key = getattr(err, "key", None)
        fallback = "--set" if set_ else "--config"
        fail(f"{sources.get(key, fallback) if key else fallback}: {err}")
    if out is not None:
        try:
            check_output_dir(out, "--out", ["results.json"])
        except ValueError as err:
            fail(str(err))
    try:
        with console.status(f"running {name}"):
            result = run_experiment(name, **bound)
    except ValueError as err:
        fail(str(err))
    metrics = Table(title=f"{name}: metrics")
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    for key, value in result.metrics.items():
        metrics.add_row(key, f"{value:.10g}" if isinstance(value, float) else str(value))
    console.print(metrics)
    for title, rows in result.tables.items():
        table = Table(title=title)
        columns = list(dict.fromkeys(k for row in rows for k in row))
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(
                *[
                    f"{row.get(c, ''):.10g}"
                    if isinstance(row.get(c), float)
                    else str(row.get(c, ""))
                    for c in columns
                ]
            )
        console.print(table)
    for note in result.notes:
        console.print(f"[blue]{note}[/]")
    if out is not None:
        files: dict[str, bytes | str] = {}
        for fig_name, figure in result.figures.items():
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=120)
            files[f"{fig_name}.png"] = buffer.getvalue()
        payload = {
            "name": result.name,
            "config": result.config,
            "metrics": result.metrics,
            "tables": result.tables,
        }
        files["results.json"] = json.dumps(payload, indent=2, default=str)
        try:
            write_output_dir(out, files, command=f"spinformer run {name}", name="--out")
        except (ValueError, OSError) as err:
            fail(f"--out {out}: {err}" if isinstance(err, OSError) else str(err))
        console.print(f"wrote {out}")


def _read_preset(config: Path, name: str) -> dict[str, Any]:
    """The config in the ``--config`` file (failing with one line otherwise).

    A ``.json`` file is either the ``results.json`` of a run of experiment ``name`` (its
    recorded ``config``, complete by construction, so the run is reproduced) or a JSON object of
    config values; any other file is TOML, whose top-level table is the config.
    """
    if not config.is_file():
        fail(f"--config must be an existing TOML file or a results.json, got {config}")
    try:
        text = config.read_bytes().decode("utf-8")
    except OSError as err:
        fail(f"--config {config} cannot be read: {err.strerror or err}")
    except UnicodeDecodeError as err:
        fail(f"--config {config} is not UTF-8 text ({err.reason} at byte {err.start})")
    if config.suffix.lower() == ".json":
        try:
            preset = json.loads(text)
        except ValueError as err:
            fail(f"--config {config} is not valid JSON: {err}")
        if not isinstance(preset, dict):
            fail(f"--config {config} must hold a JSON object, got {type(preset).__name__}")
        if isinstance(preset.get("config"), dict) and "name" in preset:  # a results.json
            if preset["name"] != name:
                fail(f"--config {config} records a run of {preset['name']!r}, not of {name!r}")
            return preset["config"]
        return preset
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        fail(f"--config {config} is not valid TOML: {err}")


@app.command("report")
def report_command(
    out: Annotated[
        Path,
        typer.Option(
            help="Output directory (index.html, metrics.json): new, empty, or one spinformer wrote."
        ),
    ] = Path("report"),
    only: Annotated[
        list[str] | None, typer.Option(help="Only these experiments or sections (repeatable).")
    ] = None,
    sections: Annotated[
        str | None,
        typer.Option(help="Comma-separated section names (default: all; see the page's contents)."),
    ] = None,
    scale: Annotated[
        str,
        typer.Option(
            help="quick: report-sized configs (minutes); full: each experiment's own defaults."
        ),
    ] = "quick",
) -> None:
    """Build the self-contained HTML report from every report experiment.

    ``--out`` must be new, empty, or a directory spinformer wrote; files in it that spinformer did
    not write are never touched.
    """
    from spinformer.report.builder import REPORT_FILES, SCALES, build_report, report_experiments

    if scale not in SCALES:
        fail(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    names = [n.strip() for n in sections.split(",") if n.strip()] if sections is not None else None
    if names is not None and not names:
        fail("--sections must name at least one section")
    try:
        experiments, _ = report_experiments(only, names)
    except ValueError as err:
        fail(
            str(err)
            .replace("only must", "--only must", 1)
            .replace("section must", "--sections must", 1)
        )
    try:
        check_output_dir(out, "--out", REPORT_FILES)
    except ValueError as err:
        fail(str(err))
    total = len(experiments)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("report", total=total)

        def advance(name: str) -> None:
            progress.update(task, description=f"running {name}")
            progress.advance(task)

        try:
            result = build_report(out, only=only, on_progress=advance, sections=names, scale=scale)
        except ValueError as err:
            fail(str(err).replace("only must", "--only must", 1))
        except OSError as err:
            fail(f"--out {out}: {err}")
    for name, error in result.failures.items():
        console.print(f"[red]failed:[/] {name}: {error}")
    console.print(f"wrote {result.path} ({sum(result.seconds.values()):.0f} s)")
    if result.failures:
        raise typer.Exit(code=1)
