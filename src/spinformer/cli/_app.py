"""The root typer application and its shared helpers.

Bad input ends in one line on stderr, ``error: <option> ...``, and exit status 2, before any work
starts (:func:`fail`); typer itself reports unknown options and unparsable values the same way
(exit status 2, the option named).
"""

from __future__ import annotations

import ast
import math
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from spinformer._validation import Limit

app = typer.Typer(
    name="spinformer",
    help="Transformers as spin systems: attention is a Boltzmann distribution, its output a magnetization.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
error_console = Console(stderr=True, soft_wrap=True, highlight=False)


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
        if not sep or not key.strip():
            fail(f"{option} expects key=value, got {item!r}")
        try:
            overrides[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            overrides[key.strip()] = raw
    return overrides


def fail(message: str) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with status 2 (bad input)."""
    one_line = " ".join(str(message).split())
    error_console.print(f"[bold red]error:[/] {escape(one_line)}")
    raise typer.Exit(code=2)


def check_option(option: str, value: float, limit: Limit | None = None) -> None:
    """Fail unless the option's ``value`` is finite and within ``limit``."""
    if isinstance(value, float) and not math.isfinite(value):
        fail(f"{option} must be a finite number, got {value}")
    if limit is not None and not limit.contains(value):
        fail(f"{option} must be {limit.describe()}, got {value!r}")


SEED_LIMIT = Limit(0, 2**63 - 1)
"""Seeds torch.Generator.manual_seed takes (the experiments' ``seed`` has the same range)."""


def main() -> None:
    app()
