"""``spinformer attention ...``: the attention-as-a-spin-system experiments.

Each command runs one registered experiment (the same function the report uses) and prints its
metrics and tables; ``--set key=value`` overrides its config and ``--out DIR`` writes its
figures and ``results.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spinformer.cli._app import app
from spinformer.cli.experiments import run_command

attention_app = typer.Typer(
    name="attention",
    help="Attention as a spin system: seed table, extensivity, β sweeps, bifurcations.",
    no_args_is_help=True,
)
app.add_typer(attention_app, name="attention")

SetOption = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="Config override key=value (repeatable).")
]
OutOption = Annotated[
    Path | None, typer.Option(help="Directory for figures (PNG) and results.json.")
]


@attention_app.command("table")
def table_command(set_: SetOption = None, out: OutOption = None) -> None:
    """Seed 000's transformer table in index notation, compact notation and our module."""
    run_command("attention_seed_table", set_, out)


@attention_app.command("extensivity")
def extensivity_command(set_: SetOption = None, out: OutOption = None) -> None:
    """ln Z, F, U, S, C of two non-interacting attention ensembles add."""
    run_command("attention_extensivity", set_, out)


@attention_app.command("sweep")
def sweep_command(set_: SetOption = None, out: OutOption = None) -> None:
    """Entropy and heat capacity of each head of an attention layer against β (real text)."""
    run_command("attention_beta_sweep", set_, out)


@attention_app.command("bifurcation")
def bifurcation_command(set_: SetOption = None, out: OutOption = None) -> None:
    """Fixed points of the mean-field self-consistency equation against β, with β_c."""
    run_command("attention_bifurcation", set_, out)


@attention_app.command("bridges")
def bridges_command(set_: SetOption = None, out: OutOption = None) -> None:
    """Pitchfork (β_c = 1/2, s = tanh(2βs)) and Curie–Weiss (m = tanh(βm)) numbers."""
    run_command("attention_mean_field_bridges", set_, out)
