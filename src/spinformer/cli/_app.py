"""The root typer application and its shared helpers."""

from __future__ import annotations

import ast
from typing import Annotated, Any

import typer
from rich.console import Console

app = typer.Typer(
    name="spinformer",
    help="Transformers as spin systems: attention is a Boltzmann distribution, its output a magnetization.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()


def _version(value: bool) -> None:
    if value:
        from spinformer import __version__

        console.print(f"spinformer {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """spinformer: check, explore and train the attention <-> spin-system mapping."""


def parse_overrides(items: list[str] | None, option: str = "--set") -> dict[str, Any]:
    """Parse ``key=value`` strings; values are Python literals when they parse, else strings."""
    overrides: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected key=value, got {item!r}", param_hint=option)
        try:
            overrides[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            overrides[key.strip()] = raw
    return overrides


def fail(message: str) -> None:
    """Print an error and exit with status 2 (bad input)."""
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def main() -> None:
    app()
