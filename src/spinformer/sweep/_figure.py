"""The figure of a sweep: a metric as a line over one swept key, or a heatmap over two.

Rows with the same swept values (the seeds of one point) are averaged, with the standard error
of the mean as error bars on the line plot. Keys beyond the first two are averaged over too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from spinformer.experiments._plot import new_figure

__all__ = ["sweep_figure"]


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mean_err(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def sweep_figure(
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    metric: str | None = None,
    title: str = "",
) -> Any:
    """The figure of column ``metric`` over the swept ``keys`` (``seed`` is averaged over).

    Returns None when ``metric`` is None or no ``ok`` row has a finite number there.
    """
    ok = [r for r in rows if r.get("status") == "ok"]
    swept = [k for k in keys if k != "seed"] or list(keys)
    if metric is None:
        return None
    ok = [r for r in ok if _numeric(r.get(metric))]
    if not ok:
        return None
    groups: dict[tuple[Any, ...], list[float]] = {}
    axes = swept[:2]
    for row in ok:
        groups.setdefault(tuple(row[k] for k in axes), []).append(float(row[metric]))
    if len(axes) == 1:
        fig, ax = new_figure(width=5.0, height=3.6)
        xs = sorted(groups, key=_sort_key)
        means = [_mean_err(groups[x]) for x in xs]
        labels = [x[0] for x in xs]
        positions = labels if all(_numeric(v) for v in labels) else list(range(len(labels)))
        ax.errorbar(positions, [m for m, _ in means], yerr=[e for _, e in means], fmt="o-")
        if positions is not labels:
            ax.set_xticks(positions, [str(v) for v in labels])
        ax.set_xlabel(axes[0])
        ax.set_ylabel(metric)
    else:
        fig, ax = new_figure(width=5.4, height=4.2)
        xs = sorted({k[0] for k in groups}, key=_sort_key1)
        ys = sorted({k[1] for k in groups}, key=_sort_key1)
        grid = [
            [_mean_err(groups[(x, y)])[0] if (x, y) in groups else math.nan for x in xs] for y in ys
        ]
        image = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(xs)), [f"{x:g}" if _numeric(x) else str(x) for x in xs])
        ax.set_yticks(range(len(ys)), [f"{y:g}" if _numeric(y) else str(y) for y in ys])
        ax.set_xlabel(axes[0])
        ax.set_ylabel(axes[1])
        ax.grid(False)
        fig.colorbar(image, ax=ax, label=metric)
    ax.set_title(title)
    return fig


def _sort_key1(value: Any) -> tuple[int, Any]:
    return (0, value) if _numeric(value) else (1, str(value))


def _sort_key(values: tuple[Any, ...]) -> tuple[tuple[int, Any], ...]:
    return tuple(_sort_key1(v) for v in values)
