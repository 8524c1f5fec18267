"""Stamped results of long report experiments (training runs, sweeps), reused only when valid.

A section registered with ``cached=True`` (:class:`spinformer.report.ReportSection`) keeps each
experiment's rendered block and metrics in a cache directory, under a stamp made of the
experiment's name, its full bound config and a hash of spinformer's own source files and
version. A later report reuses an entry only when all three match, so a cached number was
always produced by the same code and config as a fresh run would be; anything else runs again.
Entries are written atomically (:func:`spinformer._io.atomic_write`); an unreadable or
mismatched entry is ignored and replaced.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spinformer._io import atomic_write

__all__ = ["CachedBlock", "ResultCache", "code_stamp", "default_cache_dir", "result_stamp"]


@functools.cache
def code_stamp() -> str:
    """SHA-256 of spinformer's version and every source file of the installed package."""
    import spinformer

    root = Path(spinformer.__file__).parent
    digest = hashlib.sha256(spinformer.__version__.encode())
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".c") and path.is_file():
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def result_stamp(name: str, config: dict[str, Any]) -> str:
    """The stamp of one experiment run: its name, full config and :func:`code_stamp`."""
    payload = json.dumps(
        {"name": name, "config": config, "code": code_stamp()}, sort_keys=True, default=repr
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def default_cache_dir() -> Path:
    """``$SPINFORMER_CACHE``, else ``$XDG_CACHE_HOME/spinformer/report`` (``~/.cache`` default)."""
    if os.environ.get("SPINFORMER_CACHE"):
        return Path(os.environ["SPINFORMER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "spinformer" / "report"


@dataclass(frozen=True)
class CachedBlock:
    """A rendered experiment block with its metrics and the seconds the original run took."""

    html: str
    metrics: dict[str, Any]
    seconds: float


class ResultCache:
    """Rendered experiment blocks keyed by :func:`result_stamp`, one JSON file per entry."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def _path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def load(self, name: str, config: dict[str, Any]) -> CachedBlock | None:
        """The cached block of ``name`` if it was made by this code with this config."""
        try:
            entry = json.loads(self._path(name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("stamp") != result_stamp(name, config):
            return None
        return CachedBlock(entry["html"], entry["metrics"], float(entry["seconds"]))

    def store(self, name: str, config: dict[str, Any], block: CachedBlock) -> None:
        """Replace the entry of ``name`` atomically."""
        self.directory.mkdir(parents=True, exist_ok=True)
        entry = {
            "stamp": result_stamp(name, config),
            "html": block.html,
            "metrics": block.metrics,
            "seconds": block.seconds,
        }
        atomic_write(self._path(name), json.dumps(entry, default=str))
