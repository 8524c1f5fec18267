"""The experiment commands (``spinformer attention table``, ``spinformer mc published``, ...).

They are generated, not written: every experiment registered with ``cli="GROUP COMMAND"``
(:func:`spinformer.experiments.register_experiment`) becomes ``spinformer GROUP COMMAND``, which
runs it exactly as ``spinformer run NAME`` does (the same function the report uses), prints its
metrics and tables, takes ``--set key=value`` overrides and writes its figures and
``results.json`` with ``--out DIR``. A group that no module defines (``attention``, ``spin``) is
created here with the help text of :data:`GROUP_HELP`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from spinformer.cli._app import app
from spinformer.cli.experiments import run_command

__all__ = ["GROUP_HELP", "mount_experiment_commands"]

GROUP_HELP = {
    "attention": "Attention as a spin system: the transformer table, extensivity, β sweeps,"
    " bifurcations.",
    "spin": "Spin-model transformer modules: responses, mean field vs TAP, training.",
}
"""Help of the command groups created here (the ``hopfield`` and ``mc`` groups have modules)."""

SetOption = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Config override key=value (repeatable).")
]
OutOption = Annotated[
    Path | None, typer.Option(help="Directory for figures (PNG) and results.json.")
]


def _command(name: str) -> Callable[..., None]:
    def command(set_: SetOption = None, out: OutOption = None) -> None:
        run_command(name, set_, out)

    command.__name__ = f"{name}_command"
    return command


def _group(name: str) -> typer.Typer:
    for info in app.registered_groups:
        if info.name == name and info.typer_instance is not None:
            return info.typer_instance
    group = typer.Typer(name=name, help=GROUP_HELP.get(name), no_args_is_help=True)
    app.add_typer(group, name=name)
    return group


def mount_experiment_commands() -> None:
    """Add ``spinformer GROUP COMMAND`` for every experiment registered with ``cli=``."""
    from spinformer.experiments import list_experiments

    for experiment in list_experiments():
        alias = experiment.cli
        if alias is None:
            continue
        default = (
            f"Run the {experiment.name!r} experiment (see `spinformer run {experiment.name}`)."
        )
        _group(alias.group).command(alias.command, help=alias.help or default)(
            _command(experiment.name)
        )
