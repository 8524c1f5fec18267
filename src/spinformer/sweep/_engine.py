"""The sweep engine: a grid of frozen configs of one registered experiment, run anywhere.

A grid point is the registered experiment called with a config bound and checked by
:meth:`spinformer.experiments.Experiment.bind` — so every point is validated before the first
one runs — and keyed by a hash of that bound config (experiment name included). Rows are
written as points finish:

- ``results.jsonl``: one JSON object per line, appended and fsync'ed as each point finishes
  (``--resume`` reads only complete lines, so a line cut by a crash is ignored and recomputed);
- ``results.csv``: the same rows as a flat table (one column per config key and per metric),
  replaced atomically after every point, so it always holds every finished row;
- ``sweep.json``: what was asked (experiment, grid, seeds), checked again on resume;
- ``sweep.png``: a line plot over one swept key or a heatmap over two (:mod:`._figure`).

A failing point is a row with ``status = "failed"`` and its error; the others go on. Ctrl-C
cancels the pending points; every finished row is already on disk. ``resume=True`` skips the
points whose hash has an ``ok`` row (failed ones run again).
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import inspect
import io
import itertools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spinformer._io import (
    _sigint_deferred,
    atomic_write,
    check_output_dir,
    write_output_dir,
)
from spinformer._progress import counted_progress
from spinformer.sweep._executors import Task, make_executor

__all__ = ["RESULT_FILES", "SweepResult", "config_hash", "expand_grid", "sweep"]

RESULT_FILES = ("results.jsonl", "results.csv", "sweep.json", "sweep.png")
"""The files a sweep writes into its output directory."""

_BASE_COLUMNS = ("point", "config_hash", "experiment", "status", "error", "wall_s")


def config_hash(name: str, config: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit key of experiment ``name`` with the bound ``config``."""
    text = json.dumps({"experiment": name, "config": config}, sort_keys=True, default=list)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class SweepResult:
    """The table of a sweep: one row per point (the last row for a point run twice).

    Each row holds ``point``, ``config_hash``, ``experiment``, ``status`` (``ok``/``failed``),
    ``error``, ``wall_s``, every config key of the bound config and every metric. ``keys`` are the
    swept keys (``seed`` included when ``seeds`` was given).
    """

    experiment: str
    keys: tuple[str, ...]
    rows: list[dict[str, Any]]
    out: Path | None = None
    skipped: int = 0
    figure: Any = field(default=None, repr=False, compare=False)

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [row for row in self.rows if row["status"] != "ok"]

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(c for row in self.rows for c in row))

    def column(self, name: str) -> list[Any]:
        """The values of column ``name`` (None where a row lacks it, e.g. a failed point)."""
        return [row.get(name) for row in self.rows]


def _did_you_mean(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def expand_grid(
    experiment: str,
    grid: Mapping[str, Sequence[Any]],
    seeds: int | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Every point of ``grid`` (a product over keys, in order) as a bound, checked config.

    ``seeds=K`` adds ``seed = 0 .. K-1`` as the innermost key (the experiment must take ``seed``
    and the grid must not sweep it). ``fixed`` holds config values shared by every point.

    Raises:
        ValueError: an unknown experiment or key (with the nearest name), an empty value list, or
            (ConfigError, naming the key) a value the experiment does not accept.
    """
    from spinformer.experiments import get_experiment, list_experiments
    from spinformer.experiments._registry import ConfigError

    names = [e.name for e in list_experiments()]
    if experiment not in names:
        raise ValueError(
            f"experiment must be one of {sorted(names)}, got {experiment!r}"
            + _did_you_mean(experiment, names)
        )
    spec = get_experiment(experiment)
    params = list(inspect.signature(spec.fn).parameters)
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(f"grid must be a non-empty mapping of key -> values, got {grid!r}")
    axes: dict[str, list[Any]] = {}
    for key, values in grid.items():
        if key not in params:
            raise ConfigError(
                key,
                f"grid key {key!r} is not a config key of {experiment!r}"
                + _did_you_mean(key, params)
                + f"; valid: {sorted(params)}",
            )
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ConfigError(
                key, f"grid[{key!r}] must be a non-empty list of values, got {values!r}"
            )
        axes[key] = list(values)
    if seeds is not None:
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise ValueError(f"seeds must be a positive integer, got {seeds!r}")
        if "seed" not in params:
            raise ValueError(f"seeds: experiment {experiment!r} has no 'seed' config key")
        if "seed" in axes:
            raise ValueError("seeds: the grid already sweeps 'seed'; give one or the other")
        axes["seed"] = list(range(seeds))
    for key in fixed or {}:
        if key in axes:
            raise ConfigError(key, f"{key!r} is both swept and fixed; give one or the other")
    points = []
    for combo in itertools.product(*axes.values()):
        config = dict(fixed or {})
        config.update(zip(axes, combo, strict=True))
        points.append(spec.bind(config))
    return points


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return json.dumps(list(value))
    return value


def _csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    columns = list(dict.fromkeys(c for row in rows for c in row)) or list(_BASE_COLUMNS)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return buffer.getvalue()


def _flatten(record: Mapping[str, Any]) -> dict[str, Any]:
    """A JSONL record as a table row: base columns, then config keys, then metrics."""
    row = {k: record[k] for k in _BASE_COLUMNS}
    row.update(record["config"])
    for key, value in record["metrics"].items():
        row[key if key not in row else f"metric:{key}"] = value
    return row


def _read_records(path: Path) -> list[dict[str, Any]]:
    """The complete lines of ``results.jsonl`` (a trailing partial line is ignored)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    records = []
    for line in text.split("\n")[:-1]:  # the part after the last newline is incomplete
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "config_hash" in record:
            records.append(record)
    return records


def _latest(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    by_hash: dict[str, dict[str, Any]] = {}
    for record in records:
        by_hash.pop(record["config_hash"], None)
        by_hash[record["config_hash"]] = record
    return sorted(by_hash.values(), key=lambda r: r["point"])


def sweep(
    experiment: str,
    grid: Mapping[str, Sequence[Any]],
    *,
    seeds: int | None = None,
    fixed: Mapping[str, Any] | None = None,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    metric: str | None = None,
    progress: bool = False,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> SweepResult:
    """Run ``experiment`` at every point of ``grid`` (× ``seeds``) and return the table.

    Args:
        experiment: a registered experiment name.
        grid: config key -> list of values; the points are the product over keys.
        seeds: run each point with ``seed = 0 .. seeds-1``.
        fixed: config values shared by all points.
        executor: ``local`` (process pool), ``ray`` or ``dask`` (see :mod:`._executors`).
        workers: processes (local) or CPUs (a local Ray/Dask instance); default: usable cores.
        address: a Ray cluster or Dask scheduler address (``RAY_ADDRESS`` is read by Ray).
        out: directory for results.jsonl/.csv, sweep.json and sweep.png; None keeps rows in memory.
        resume: continue the sweep in ``out``, skipping points that already have an ``ok`` row.
        metric: the metric the figure shows (default: the first numeric one).
        progress: show a rich progress bar.
        on_row: called with each table row as its point finishes.

    Raises:
        ValueError: bad input (experiment, grid, seeds, executor, address, out), before any
            point runs.
    """
    from spinformer.experiments import get_experiment

    points = expand_grid(experiment, grid, seeds=seeds, fixed=fixed)
    keys = tuple(grid) + (("seed",) if seeds is not None else ())
    module = get_experiment(experiment).fn.__module__
    hashes = [config_hash(experiment, p) for p in points]
    spec = {
        "experiment": experiment,
        "grid": {k: list(v) for k, v in grid.items()},
        "seeds": seeds,
        "fixed": dict(fixed or {}),
    }
    records: list[dict[str, Any]] = []
    directory = Path(out) if out is not None else None
    if directory is not None:
        check_output_dir(directory, "out", RESULT_FILES)
        records = _prepare_out(directory, spec, resume)
    elif resume:
        raise ValueError("resume needs out, the directory of the sweep to continue")
    done = {r["config_hash"] for r in records if r.get("status") == "ok"}
    todo = [i for i, h in enumerate(hashes) if h not in done]
    runner = make_executor(executor, workers=workers, address=address)
    runner.start()
    jsonl = directory / "results.jsonl" if directory is not None else None
    bar = _progress(progress, len(points), len(points) - len(todo), experiment)
    try:
        tasks: list[Task] = [(module, experiment, points[i]) for i in todo]
        for position, result in runner.run(tasks):
            index = todo[position]
            record = {
                "point": index,
                "config_hash": hashes[index],
                "experiment": experiment,
                "status": result["status"],
                "error": result["error"],
                "wall_s": result["wall_s"],
                "config": points[index],
                "metrics": result["metrics"],
            }
            records.append(record)
            if jsonl is not None:
                _append(jsonl, record)
            if on_row is not None:
                on_row(_flatten(record))
            if bar is not None:
                bar[0].advance(bar[1])
    finally:
        if bar is not None:
            bar[0].stop()
        runner.close()
    rows = [_flatten(r) for r in _latest(records)]
    figure = None
    if rows:
        from spinformer.sweep._figure import sweep_figure

        if metric is None:
            metric = next(
                (k for r in records for k, v in r["metrics"].items() if _is_number(v)), None
            )
        figure = sweep_figure(rows, keys, metric=metric, title=experiment)
    if directory is not None and figure is not None:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=120)
        _write_all(directory, spec, records, {"sweep.png": buffer.getvalue()})
    return SweepResult(experiment, keys, rows, directory, len(points) - len(todo), figure)


def _progress(enabled: bool, total: int, completed: int, name: str) -> Any:
    if not enabled:
        return None
    bar = counted_progress(f"sweep {name}")
    task = bar.add_task(name, total=total, completed=completed)
    bar.start()
    return bar, task


def _spec_text(spec: Mapping[str, Any]) -> str:
    return json.dumps(spec, indent=2, default=list) + "\n"


def _write_all(
    directory: Path,
    spec: Mapping[str, Any],
    records: Sequence[dict[str, Any]],
    extra: Mapping[str, bytes | str] | None = None,
) -> None:
    lines = "".join(json.dumps(r, default=list) + "\n" for r in records)
    files: dict[str, bytes | str] = {
        "sweep.json": _spec_text(spec),
        "results.jsonl": lines,
        "results.csv": _csv_text([_flatten(r) for r in _latest(records)]),
    }
    if (directory / "sweep.png").exists() and not extra:
        files["sweep.png"] = (directory / "sweep.png").read_bytes()
    files.update(extra or {})
    write_output_dir(directory, files, command=f"spinformer sweep {spec['experiment']}", name="out")


def _prepare_out(directory: Path, spec: Mapping[str, Any], resume: bool) -> list[dict[str, Any]]:
    """Check ``out`` against ``resume``; write the spec and the existing rows; return them."""
    has_results = (directory / "results.jsonl").exists()
    if has_results and not resume:
        raise ValueError(
            f"out {str(directory)!r} already holds a sweep (results.jsonl); pass resume to "
            "continue it, or choose a new directory"
        )
    records: list[dict[str, Any]] = []
    if resume and has_results:
        try:
            previous = json.loads((directory / "sweep.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            previous = None
        if previous != json.loads(_spec_text(spec)):
            raise ValueError(
                f"resume: out {str(directory)!r} holds another sweep ({previous!r}); resume needs "
                "the same experiment, grid, seeds and fixed values"
            )
        records = _read_records(directory / "results.jsonl")
    _write_all(directory, spec, records)
    return records


def _append(path: Path, record: Mapping[str, Any]) -> None:
    """Append one complete line and fsync it; refresh results.csv atomically (SIGINT held)."""
    line = (json.dumps(record, default=list) + "\n").encode("utf-8")
    with _sigint_deferred():
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        records = _read_records(path)
        atomic_write(
            path.parent / "results.csv", _csv_text([_flatten(r) for r in _latest(records)])
        )
