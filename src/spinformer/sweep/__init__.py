"""Sweeps: a registered experiment over a grid of frozen configs, on a local process pool, Ray or
Dask, with rows on disk as points finish, resume by config hash, and one figure per sweep.

>>> from spinformer.sweep import sweep
>>> table = sweep("hopfield_capacity", {"num_spins": [100, 200]}, seeds=3, out="runs/cap")
"""

import sys
import types
from typing import Any

from spinformer.sweep._engine import RESULT_FILES, SweepResult, config_hash, expand_grid, sweep
from spinformer.sweep._executors import (
    Executor,
    available_executors,
    make_executor,
    register_executor,
    run_point,
)
from spinformer.sweep._figure import sweep_figure

__all__ = [
    "RESULT_FILES",
    "Executor",
    "SweepResult",
    "available_executors",
    "config_hash",
    "expand_grid",
    "make_executor",
    "register_executor",
    "run_point",
    "sweep",
    "sweep_figure",
]


class _CallableModule(types.ModuleType):
    """``spinformer.sweep(...)`` calls :func:`sweep` (the package is also the function)."""

    def __call__(self, *args: Any, **kwargs: Any) -> SweepResult:
        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
