"""Experiments: the single source of every number and figure (CLI, report, docs).

Importing this package registers every experiment module listed below. It offers the
registry's API (:mod:`spinformer.experiments._registry`), the config limits included.
"""

from spinformer.experiments import attention as _attention  # noqa: F401
from spinformer.experiments import benchmarks as _benchmarks  # noqa: F401
from spinformer.experiments import hopfield as _hopfield  # noqa: F401
from spinformer.experiments import lens as _lens  # noqa: F401
from spinformer.experiments import meanfield as _meanfield  # noqa: F401
from spinformer.experiments import montecarlo as _montecarlo  # noqa: F401
from spinformer.experiments import seedclaims as _seedclaims  # noqa: F401
from spinformer.experiments import sweep_report as _sweep_report  # noqa: F401
from spinformer.experiments import sweeps as _sweeps  # noqa: F401
from spinformer.experiments import thermo as _thermo  # noqa: F401
from spinformer.experiments import training as _training  # noqa: F401
from spinformer.experiments._registry import *  # noqa: F403  (the public API is the registry's)
from spinformer.experiments._registry import __all__ as __all__
