"""``spinformer spin``: the spin-model transformer modules' experiments from the command line.

Each command runs a registered experiment (the same function the report uses) and prints its
metrics and tables; ``--set key=value`` overrides its config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spinformer.cli._app import app
from spinformer.cli.experiments import run_command

spin_app = typer.Typer(
    help="Spin-model transformer modules: responses, mean field vs TAP, training.",
    no_args_is_help=True,
)
app.add_typer(spin_app, name="spin")

SetOption = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Config override key=value (repeatable).")
]
OutOption = Annotated[Path | None, typer.Option(help="Directory for figures and results.json.")]


@spin_app.command("response")
def response_command(set_: SetOption = None, out: OutOption = None) -> None:
    """Large-D response φ vs the exact Bessel response: error and its 1/D slope."""
    run_command("large_d_response", set_, out)


@spin_app.command("tap")
def tap_command(set_: SetOption = None, out: OutOption = None) -> None:
    """Naive mean field and TAP vs exact enumeration as the couplings shrink (ε², ε³)."""
    run_command("mean_field_tap_scaling", set_, out)


@spin_app.command("train")
def train_command(set_: SetOption = None, out: OutOption = None) -> None:
    """Train SpinTransformer and the Transformer reference on associative recall.

    Example: spinformer spin train --set steps=100 --set "blocks=('spin','mean_field')"
    """
    run_command("spin_transformer_recall", set_, out)
