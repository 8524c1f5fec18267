"""``spinformer mc``: Monte Carlo thermodynamics with errors, and the Monte Carlo experiments."""

from __future__ import annotations

from typing import Annotated

import torch
import typer
from rich.table import Table

from spinformer._validation import Limit
from spinformer.cli._app import SEED_LIMIT, app, check_option, console, fail
from spinformer.cli.thermo import ModelName
from spinformer.physics import (
    ALGORITHMS,
    ENGINES,
    chain,
    curie_weiss,
    sherrington_kirkpatrick,
    square_lattice,
    thermodynamics,
)

mc_app = typer.Typer(help="Monte Carlo sampling and ergodicity experiments.", no_args_is_help=True)
app.add_typer(mc_app, name="mc")


@mc_app.command("sample")
def sample_command(
    model: Annotated[ModelName, typer.Argument(help="Which spin model.")],
    size: Annotated[int, typer.Option(help="Lattice side L or number of spins N.")] = 16,
    beta: Annotated[float, typer.Option(help="Inverse temperature β > 0.")] = 0.44,
    field: Annotated[float, typer.Option(help="Uniform external field h.")] = 0.0,
    algorithm: Annotated[str, typer.Option(help=f"One of {ALGORITHMS}.")] = "metropolis",
    sweeps: Annotated[int, typer.Option(help="Recorded sweeps (cluster flips for Wolff).")] = 2000,
    chains: Annotated[int, typer.Option(help="Independent chains (one batched run).")] = 16,
    initial: Annotated[str, typer.Option(help="'random' (hot) or 'up' (cold) start.")] = "random",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    engine: Annotated[
        str,
        typer.Option(
            help=f"One of {ENGINES}: 'auto' picks the fastest that supports the run; "
            "'multispin' packs 64 chains per word (Metropolis, periodic even square lattice, "
            "h = 0); 'checkerboard' is compiled (Metropolis or heat bath, periodic even square "
            "lattice, uniform h, CPU); 'tensor' runs everything."
        ),
    ] = "auto",
    backend: Annotated[
        str,
        typer.Option(help="For engine 'multispin': 'auto', 'native' (C kernel) or 'torch'."),
    ] = "auto",
) -> None:
    """Monte Carlo estimates with standard errors and autocorrelation times.

    Example: spinformer mc sample square-lattice --size 16 --beta 0.44 --algorithm wolff

    Example: spinformer mc sample square-lattice --size 64 --engine multispin --chains 256
    """
    check_option("--size", size, Limit(1))
    check_option("--field", field)
    check_option("--seed", seed, SEED_LIMIT)
    generator = torch.Generator().manual_seed(seed)
    try:
        if model is ModelName.square_lattice:
            spin_model = square_lattice(size, field=field, beta=beta)
        elif model is ModelName.chain:
            spin_model = chain(size, field=field, beta=beta)
        elif model is ModelName.curie_weiss:
            spin_model = curie_weiss(size, field=field, beta=beta)
        else:
            spin_model = sherrington_kirkpatrick(size, beta, generator, field)
        result = thermodynamics(
            spin_model,
            "monte_carlo",
            algorithm=algorithm,
            sweeps=sweeps,
            chains=chains,
            initial=initial,
            generator=generator,
            progress=True,
            engine=engine,
            backend=backend,
        )
    except ValueError as err:
        fail(str(err))
    n = spin_model.num_spins
    taus = result.extras["autocorrelation_time"]
    title = f"{model.value}, N = {n}, β = {beta:g}, h = {field:g}, {algorithm}"
    table = Table(title=f"{title} ({result.extras['engine']} engine)")
    for column in ("observable", "estimate", "stderr", "tau_int"):
        table.add_column(column, justify="right")
    rows = [
        ("E / N", result.energy / n, result.stderr["energy"] / n, taus["energy"]),
        (
            "C / N",
            result.heat_capacity / n,
            result.stderr["heat_capacity"] / n,
            taus["heat_capacity"],
        ),
        (
            "<m^2>",
            result.extras["magnetization_squared"],
            result.stderr["magnetization_squared"],
            taus["magnetization_squared"],
        ),
        ("<|m|>", result.extras["abs_magnetization"], result.stderr["abs_magnetization"], None),
    ]
    for name, value, err, tau in rows:
        table.add_row(
            name,
            f"{float(value):.8g}",
            f"{float(err):.2g}",
            "" if tau is None else f"{float(tau):.3g}",
        )
    console.print(table)
    console.print(
        f"[dim]acceptance {float(result.extras['acceptance'].mean()):.3f}; "
        f"run length >= 50 tau: {bool(result.converged)}[/]"
    )
