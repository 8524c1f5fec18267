"""``spinformer sweep``: a registered experiment over a grid, on a process pool, Ray or Dask.

Everything is checked before the first point runs: the experiment name and every grid key (with
the nearest valid name), every value of every point (:meth:`Experiment.bind`), ``--seeds``,
``--out``, the executor's extra (its install command) and ``--address`` (connected to first).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Annotated, Any

import typer

from spinformer.cli._app import app, console, fail


def split_values(raw: str) -> list[str]:
    """``raw`` split at the commas outside brackets and quotes: ``(1,2),(3,4)`` -> 2 values."""
    parts, depth, quote, current = [], 0, "", []
    for char in raw:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts]


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``key=v1,v2,...`` options as ``{key: [values]}`` (values parsed as Python literals)."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            fail(f"--grid expects key=v1,v2,..., got {item!r}")
        if key in grid:
            fail(f"--grid {key} is given twice; list all its values in one --grid {key}=...")
        values = []
        for text in split_values(raw):
            if not text:
                fail(f"--grid {item}: empty value in the list")
            try:
                values.append(ast.literal_eval(text))
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                values.append(text)
        grid[key] = values
    return grid


@app.command("sweep")
def sweep_command(
    name: Annotated[str, typer.Argument(help="Experiment name (see `spinformer experiments`).")],
    grid: Annotated[
        list[str],
        typer.Option("--grid", "-g", help="Swept key and its values, key=v1,v2,... (repeatable)."),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="Directory for results.csv/.jsonl and sweep.png: new, empty, or a sweep."
        ),
    ],
    seeds: Annotated[
        int | None, typer.Option(help="Run every point with seed = 0 .. SEEDS-1.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Config value shared by all points, key=value."),
    ] = None,
    executor: Annotated[str, typer.Option(help="Where points run: local, ray or dask.")] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster or Dask scheduler address (Ray also reads RAY_ADDRESS)."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default: the usable cores).")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the sweep in --out; points with an ok row are skipped.")
    ] = False,
    metric: Annotated[
        str | None, typer.Option(help="Metric shown in sweep.png (default: the first one).")
    ] = None,
) -> None:
    """Run an experiment at every grid point; rows go to --out as points finish.

    Example: spinformer sweep hopfield_capacity --grid num_spins=250,500 --seeds 5 --out runs/cap
    """
    from spinformer.cli._app import parse_overrides
    from spinformer.experiments._registry import ConfigError
    from spinformer.sweep import available_executors, sweep
    from spinformer.sweep._engine import RESULT_FILES, expand_grid
    from spinformer.sweep._executors import make_executor

    parsed = parse_grid(grid)
    fixed = parse_overrides(set_)
    if seeds is not None and seeds < 1:
        fail(f"--seeds must be a positive integer, got {seeds}")
    if workers is not None and workers < 1:
        fail(f"--workers must be a positive integer, got {workers}")
    if executor not in available_executors():
        fail(f"--executor must be one of {available_executors()}, got {executor!r}")
    try:
        points = expand_grid(name, parsed, seeds=seeds, fixed=fixed)
    except ConfigError as err:
        option = "--set" if err.key in fixed else "--grid"
        fail(f"{option} {err.key}: {err}")
    except ValueError as err:
        message = str(err)
        if message.startswith("experiment must"):
            fail(f"NAME: {message}")
        fail(f"--seeds: {message}" if message.startswith("seeds") else message)
    try:
        from spinformer._io import check_output_dir

        check_output_dir(out, "--out", RESULT_FILES if not resume else ())
        probe = make_executor(executor, workers=workers, address=address)
    except ValueError as err:
        fail(f"--executor {executor}: {err}" if "install" in str(err) else str(err))
    if address is not None:
        try:
            probe.start()  # connect first: an unreachable address fails before any point runs
        except ValueError as err:
            fail(f"--address {address}: {err}")
        finally:
            probe.close()
    console.print(f"sweep {name}: {len(points)} points on {executor}")

    try:
        result = sweep(
            name, parsed, seeds=seeds, fixed=fixed, executor=executor, workers=workers,
            address=address, out=out, resume=resume, metric=metric, progress=True,
        )  # fmt: skip
    except ValueError as err:
        fail(str(err).replace("out ", "--out ", 1).replace("resume", "--resume", 1))
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted:[/] finished rows are in {out}; --resume continues")
        raise typer.Exit(code=130) from None
    failed = result.failures
    console.print(
        f"wrote {out}: {len(result.rows)} rows ({result.skipped} resumed, {len(failed)} failed)"
    )
    for row in failed:
        console.print(f"[red]failed:[/] point {row['point']}: {row['error']}")
    if failed:
        raise typer.Exit(code=1)
