"""The ``spinformer`` command line: thermodynamics tables, experiments, the HTML report.

Sub-command groups live in their own modules and are mounted here; the experiment commands
(``spinformer attention table``, ...) are generated from the experiments' registrations.
"""

from __future__ import annotations

from spinformer.cli import experiments as _experiments  # noqa: F401
from spinformer.cli import hopfield as _hopfield  # noqa: F401
from spinformer.cli import lens as _lens  # noqa: F401
from spinformer.cli import mc as _mc  # noqa: F401
from spinformer.cli import sweep as _sweep  # noqa: F401
from spinformer.cli import thermo as _thermo  # noqa: F401  (registers commands)
from spinformer.cli import train as _train  # noqa: F401
from spinformer.cli._aliases import mount_experiment_commands
from spinformer.cli._app import app, main

__all__ = ["app", "main"]

mount_experiment_commands()  # spinformer GROUP COMMAND of every experiment registered with cli=
