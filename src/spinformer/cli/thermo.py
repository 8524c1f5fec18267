"""``spinformer thermo``: exact (or any registered method's) thermodynamics as a table."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import torch
import typer
from rich.table import Table

from spinformer.cli._app import SEED_LIMIT, app, check_option, console, fail, parse_overrides
from spinformer.physics import (
    available_methods,
    chain,
    curie_weiss,
    sherrington_kirkpatrick,
    square_lattice,
    thermodynamics,
)


class ModelName(StrEnum):
    square_lattice = "square-lattice"
    chain = "chain"
    curie_weiss = "curie-weiss"
    sk = "sk"


@app.command()
def thermo(
    model: Annotated[ModelName, typer.Argument(help="Which spin model.")],
    size: Annotated[
        int, typer.Option(help="Lattice side L (square lattice) or number of spins N.")
    ] = 4,
    beta: Annotated[float, typer.Option(help="Inverse temperature β > 0.")] = 0.44,
    coupling: Annotated[float, typer.Option(help="Coupling J (ignored for sk).")] = 1.0,
    field: Annotated[float, typer.Option(help="Uniform external field h.")] = 0.0,
    periodic: Annotated[bool, typer.Option(help="Periodic boundaries (lattice and chain).")] = True,
    method: Annotated[str, typer.Option(help="Registered thermodynamics method.")] = "exact",
    seed: Annotated[int, typer.Option(help="Seed for random couplings (sk).")] = 0,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="Method option key=value (repeatable)."),
    ] = None,
) -> None:
    """Print the thermodynamics of a spin model (totals and per spin).

    Example: spinformer thermo square-lattice --size 4 --beta 0.44
    """
    if size < 1:
        fail(f"--size must be a positive integer, got {size}")
    if method not in available_methods():
        fail(f"--method must be one of {available_methods()}, got {method!r}")
    check_option("--coupling", coupling)
    check_option("--field", field)
    check_option("--seed", seed, SEED_LIMIT)
    options = parse_overrides(option, "--option")
    try:
        if model is ModelName.square_lattice:
            spin_model = square_lattice(size, coupling, field, beta, periodic)
        elif model is ModelName.chain:
            spin_model = chain(size, coupling, field, beta, periodic)
        elif model is ModelName.curie_weiss:
            spin_model = curie_weiss(size, coupling, field, beta)
        else:
            spin_model = sherrington_kirkpatrick(
                size, beta, torch.Generator().manual_seed(seed), field
            )
        enumerating = (
            method == "exact" and spin_model.lattice is None and spin_model.num_spins >= 18
        )
        if enumerating:  # long: a progress bar over the chunks of 2^N states
            options.setdefault("progress", True)
            result = thermodynamics(spin_model, method=method, **options)
        else:
            with console.status(f"computing thermodynamics ({method})"):
                result = thermodynamics(spin_model, method=method, **options)
    except ValueError as err:
        fail(str(err))
    except TypeError as err:
        if not option:
            raise
        # the --option values are the only keyword arguments the user chose
        fail(f"--option {' '.join(option)}: {err}")
    n = spin_model.num_spins
    table = Table(title=f"{model.value}, N = {n}, β = {beta:g}, h = {field:g}, method = {method}")
    table.add_column("quantity")
    table.add_column("total", justify="right")
    table.add_column("per spin", justify="right")
    total, per_spin = result.summary(), result.summary(num_spins=n)
    for key in ("log_partition", "free_energy", "energy", "entropy", "heat_capacity"):
        err = result.stderr.get(key)
        suffix = f" ± {float(err):.2g}" if err is not None else ""
        table.add_row(key, f"{total[key]:.12g}{suffix}", f"{per_spin[key]:.12g}")
    table.add_row("magnetization (mean)", "", f"{total['magnetization']:.12g}")
    if result.susceptibility is not None and result.susceptibility.ndim == 2:
        table.add_row(
            "susceptibility Σχ_ij / N", "", f"{float(result.susceptibility.sum()) / n:.12g}"
        )
    console.print(table)
    route = result.extras.get("route")
    if route:
        console.print(f"[dim]route: {route}[/]")
