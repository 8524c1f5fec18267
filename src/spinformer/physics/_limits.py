"""Size limits checked before work starts: every exact, transfer-matrix and sampling entry
estimates the memory it will hold and the arithmetic it will do, then either refuses at once
(:class:`ResourceLimitError`, naming the limit and an alternative) or runs, with a progress bar
when the work is long.

The estimates are deliberately simple (bytes of the largest live tensors, multiply-adds of the
dominant products); they decide between "runs" and "refuses" an order of magnitude before the
allocator would, and never need to be exact. The memory limit defaults to
:data:`DEFAULT_MEMORY_LIMIT_GB` and can be changed for a process with the environment variable
``SPINFORMER_MEMORY_LIMIT_GB`` (read at each check, so a test or a large machine can raise it).
"""

from __future__ import annotations

import math
import os
import sys

__all__ = [
    "DEFAULT_MEMORY_LIMIT_GB",
    "LONG_WORK_OPERATIONS",
    "MAX_OPERATIONS",
    "MEMORY_LIMIT_ENV",
    "ResourceLimitError",
    "check_memory",
    "check_work",
    "memory_limit_bytes",
    "show_progress",
]

DEFAULT_MEMORY_LIMIT_GB = 4.0
"""Largest estimated working set (GiB) an entry point accepts before refusing."""

MEMORY_LIMIT_ENV = "SPINFORMER_MEMORY_LIMIT_GB"

LONG_WORK_OPERATIONS = 2e10
"""Estimated floating-point operations (about ten seconds on one core) above which long work
shows a progress bar unless the caller said ``progress=False``."""

MAX_OPERATIONS = 1e14
"""Estimated floating-point operations (hours on one core) above which work is refused."""


class ResourceLimitError(ValueError):
    """A request whose estimated memory or work exceeds the limit; raised before any work."""


def memory_limit_bytes() -> float:
    """The memory limit in bytes (``SPINFORMER_MEMORY_LIMIT_GB`` or the default)."""
    raw = os.environ.get(MEMORY_LIMIT_ENV)
    if raw is None:
        return DEFAULT_MEMORY_LIMIT_GB * 2**30
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{MEMORY_LIMIT_ENV} must be a positive number of GiB, got {raw!r}")
    return value * 2**30


def check_memory(nbytes: float, what: str, alternative: str) -> None:
    """Raise :class:`ResourceLimitError` if ``what`` needs more than the memory limit.

    ``alternative`` completes the sentence "use ..." with what the caller can do instead.
    """
    limit = memory_limit_bytes()
    if nbytes > limit:
        raise ResourceLimitError(
            f"{what} needs about {nbytes / 2**30:.3g} GiB, over the memory limit of "
            f"{limit / 2**30:.3g} GiB ({MEMORY_LIMIT_ENV}); use {alternative}"
        )


def check_work(operations: float, what: str, alternative: str) -> None:
    """Raise :class:`ResourceLimitError` if ``what`` needs more than :data:`MAX_OPERATIONS`."""
    if operations > MAX_OPERATIONS:
        raise ResourceLimitError(
            f"{what} needs about {operations:.2g} floating-point operations, over the limit of "
            f"{MAX_OPERATIONS:.2g} (hours of work); use {alternative}"
        )


def show_progress(progress: bool | None, operations: float) -> bool:
    """``progress`` if the caller chose; otherwise on when the work is long and the output is
    a terminal (a pipe or a captured stream gets no bar)."""
    if progress is not None:
        return bool(progress)
    return operations > LONG_WORK_OPERATIONS and sys.stdout.isatty()
