"""One layout for the counted progress bars of long loops (training steps, sweep points)."""

from __future__ import annotations

from typing import Any

__all__ = ["counted_progress"]


def counted_progress(label: str, *fields: str, **options: Any) -> Any:
    """A rich ``Progress``: ``label``, bar, done/total, a text column per ``fields``, times.

    ``fields`` are rich format strings (e.g. ``"loss {task.fields[loss]}"``); ``options`` go to
    ``rich.progress.Progress`` (``console``, ``disable``, ``transient``). rich is imported here,
    when a bar is wanted, not at import time of the caller.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        *(TextColumn(f) for f in fields),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        **options,
    )
