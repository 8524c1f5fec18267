"""``spinformer hopfield``: retrieval demos; the capacity / landscape experiment commands are
generated from their registrations (:mod:`spinformer.cli._aliases`)."""

from __future__ import annotations

from typing import Annotated

import torch
import typer
from rich.table import Table

from spinformer._validation import Limit
from spinformer.cli._app import SEED_LIMIT, app, check_option, console, fail
from spinformer.hopfield import ClassicalHopfield, random_patterns

hopfield_app = typer.Typer(help="Classical and modern Hopfield networks.", no_args_is_help=True)
app.add_typer(hopfield_app, name="hopfield")


@hopfield_app.command("retrieve")
def retrieve_command(
    spins: Annotated[int, typer.Option(help="Number of spins N.")] = 500,
    patterns: Annotated[int, typer.Option(help="Number of stored patterns P.")] = 25,
    corruption: Annotated[
        float, typer.Option(help="Fraction of spins flipped at the start.")
    ] = 0.2,
    temperature: Annotated[float, typer.Option(help="Glauber temperature T >= 0.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Store random patterns, corrupt each, run the network, print the overlaps.

    Example: spinformer hopfield retrieve --spins 500 --patterns 25 --corruption 0.2
    """
    check_option("--spins", spins, Limit(1))
    check_option("--patterns", patterns, Limit(1))
    check_option("--corruption", corruption, Limit(0, 1))
    check_option("--temperature", temperature, Limit(0))
    check_option("--seed", seed, SEED_LIMIT)
    generator = torch.Generator().manual_seed(seed)
    try:
        net = ClassicalHopfield(random_patterns(patterns, spins, generator))
        starts = net.corrupt(net.patterns, corruption, generator)
        run = net.run(starts, temperature=temperature, generator=generator)
    except ValueError as err:
        fail(str(err))
    table = Table(title=f"N = {spins}, P = {patterns} (α = {net.load:.3f}), T = {temperature:g}")
    for column in ("pattern", "start overlap", "final overlap", "sweeps", "converged"):
        table.add_column(column, justify="right")
    start_overlap = net.overlaps(starts).diagonal()
    for mu in range(min(patterns, 20)):
        table.add_row(
            str(mu),
            f"{float(start_overlap[mu]):.3f}",
            f"{float(run.overlaps[mu, mu]):.3f}",
            str(int(run.sweeps[mu])),
            str(bool(run.converged[mu])),
        )
    console.print(table)
    console.print(f"mean final overlap {float(run.overlaps.diagonal().mean()):.4f}")
