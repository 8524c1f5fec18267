"""``spinformer run``, ``spinformer experiments`` and ``spinformer report``."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

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
        Path | None, typer.Option(help="Directory for figures (PNG) and results.json.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="TOML preset (e.g. configs/NAME.toml); --set overrides it.")
    ] = None,
) -> None:
    """Run one experiment and print its metrics and tables.

    Example: spinformer run ising_lattice_sweep --config configs/ising_lattice_sweep_cpu.toml --set num_betas=21
    """
    from spinformer.experiments import run_experiment

    overrides: dict = {}
    if config is not None:
        if not config.is_file():
            fail(f"--config must be an existing TOML file, got {config}")
        try:
            preset = tomllib.loads(config.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            fail(f"--config {config} is not valid TOML: {err}")
            return
        overrides.update({k: tuple(v) if isinstance(v, list) else v for k, v in preset.items()})
    overrides.update(parse_overrides(set_))
    try:
        with console.status(f"running {name}"):
            result = run_experiment(name, **overrides)
    except ValueError as err:
        fail(str(err))
        return
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
        out.mkdir(parents=True, exist_ok=True)
        for fig_name, figure in result.figures.items():
            figure.savefig(out / f"{fig_name}.png", dpi=120)
        payload = {
            "name": result.name,
            "config": result.config,
            "metrics": result.metrics,
            "tables": result.tables,
        }
        (out / "results.json").write_text(json.dumps(payload, indent=2, default=str))
        console.print(f"wrote {out}")


@app.command("report")
def report_command(
    out: Annotated[Path, typer.Option(help="Output directory (index.html, metrics.json).")] = Path(
        "report"
    ),
    only: Annotated[
        list[str] | None, typer.Option(help="Only these experiments or sections (repeatable).")
    ] = None,
) -> None:
    """Build the self-contained HTML report from every report experiment."""
    from spinformer.experiments import list_experiments
    from spinformer.report import build_report

    total = sum(1 for e in list_experiments() if e.section is not None)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("report", total=total if not only else None)

        def advance(name: str) -> None:
            progress.update(task, description=f"running {name}")
            progress.advance(task)

        try:
            result = build_report(out, only=only, on_progress=advance)
        except ValueError as err:
            fail(str(err))
            return
    for name, error in result.failures.items():
        console.print(f"[red]failed:[/] {name}: {error}")
    console.print(f"wrote {result.path} ({sum(result.seconds.values()):.0f} s)")
    if result.failures:
        raise typer.Exit(code=1)
