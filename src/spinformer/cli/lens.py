"""``spinformer lens MODEL``: read a pretrained transformer as a spin system on real text.

Prints rich tables (per layer, and a layer × head phase grid), and with ``--out DIR`` writes
``results.json`` (every number, :meth:`LensResult.to_dict`), ``tensors.safetensors`` (attention
weights, layer inputs, self-consistent states) and the figures, each written atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from spinformer.cli._app import app, console, fail

DEFAULT_TEXT = (
    "The cat sat on the mat. Attention in a transformer is the Boltzmann distribution of a"
    " spin system, and its output is a magnetization."
)


def _atomic_write(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _parse_head(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    layer, sep, head = value.partition(".")
    if not sep or not layer.isdigit() or not head.isdigit():
        raise typer.BadParameter(f"expected LAYER.HEAD such as 2.5, got {value!r}")
    return int(layer), int(head)


@app.command("lens")
def lens_command(
    model: Annotated[
        str, typer.Argument(help="minilm, smollm2, or a local Hugging Face model directory.")
    ],
    text: Annotated[str | None, typer.Option(help="Text to analyse.")] = None,
    file: Annotated[Path | None, typer.Option(help="Read the text from this file (UTF-8).")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Directory for results.json, tensors and figures.")
    ] = None,
    head: Annotated[
        str | None, typer.Option(help="LAYER.HEAD for the spin-system picture (default: auto).")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="Keep only the first MAX_TOKENS tokens of the text.")
    ] = None,
) -> None:
    """Couplings, ensembles, self-consistent states and phases of every head on real text."""
    if text is not None and file is not None:
        fail("pass either --text or --file, not both")
    if file is not None:
        if not file.is_file():
            fail(f"--file {str(file)!r} is not a readable file")
        text = file.read_text(encoding="utf-8")
    text = DEFAULT_TEXT if text is None else text
    if not text.strip():
        fail("the text is empty")
    if max_tokens is not None and max_tokens < 1:
        fail(f"--max-tokens must be a positive integer, got {max_tokens}")
    spin_head = _parse_head(head)
    out_dir = None
    if out is not None:
        if out.exists() and not out.is_dir():
            fail(f"--out {str(out)!r} exists and is not a directory")
        out_dir = out

    from spinformer.lens import analyze, load

    try:
        with console.status(f"loading {model}"):
            lens = load(model)
        source: object = text
        if max_tokens is not None:
            ids, _ = lens.encode(text)
            source = ids[:max_tokens]
        with console.status("forward pass, ensembles, self-consistent states"):
            result = analyze(lens, source)  # type: ignore[arg-type]
        if spin_head is not None and not (
            spin_head[0] < result.num_layers and spin_head[1] < result.num_heads
        ):
            fail(
                f"--head must lie within {result.num_layers} layers × {result.num_heads} heads,"
                f" got {head}"
            )
    except (ValueError, ImportError) as err:
        fail(str(err))
        return
    _print_tables(result)
    if out_dir is not None:
        _write(result, out_dir, spin_head)


def _print_tables(result) -> None:  # type: ignore[no-untyped-def]
    import torch

    from spinformer.lens import PHASES, RAMSAUER_CLASSES

    console.print(
        f"[bold]{result.name}[/] ({result.family}, {result.num_layers} layers ×"
        f" {result.num_heads} heads) on {len(result.tokens)} tokens;"
        f" timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items())
    )
    table = Table(
        title="per layer (means over heads; H/M/O: heads high-temperature/metastable/ordered;"
        " Ramsauer classes global/subset/single)"
    )
    columns = ("layer", "β", "asymmetry", "S/ln N", "C", "median β/β_c", "H/M/O", "gl/sub/one")
    for column in columns:
        table.add_column(column, justify="right")
    entropy = torch.nanmean(result.normalized_entropy, dim=-1)
    heat = result.heat_capacity.mean(dim=-1)
    for layer in range(result.num_layers):
        ratio = "—"
        phases = "—"
        if result.beta_ratio is not None:
            ratio = f"{float(result.beta_ratio[layer].median()):.3f}"
            counts = torch.bincount(result.phase[layer], minlength=len(PHASES)).tolist()
            phases = "/".join(str(n) for n in counts)
        counts = torch.bincount(result.ramsauer[layer], minlength=len(RAMSAUER_CLASSES)).tolist()
        ramsauer = "/".join(str(n) for n in counts)
        table.add_row(
            str(layer),
            f"{float(result.beta[layer].mean()):.4g}",
            f"{float(result.asymmetry[layer].mean()):.3f}",
            f"{float(entropy[layer].nanmean()):.3f}",
            f"{float(heat[layer].mean()):.3f}",
            ratio,
            phases,
            ramsauer,
        )
    console.print(table)
    if result.phase is not None:
        grid = Table(title="phase per head (H high-temperature, M metastable, O ordered)")
        grid.add_column("layer", justify="right")
        for h in range(result.num_heads):
            grid.add_column(str(h), justify="center")
        letters = {0: "[green]H[/]", 1: "[yellow]M[/]", 2: "[red]O[/]"}
        for layer in range(result.num_layers):
            grid.add_row(str(layer), *(letters[int(c)] for c in result.phase[layer]))
        console.print(grid)


def _write(result, out_dir: Path, spin_head: tuple[int, int] | None) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import save

    from spinformer.lens._figures import lens_figures

    figures = lens_figures(result, spin_head)  # build everything before touching the disk
    payload = json.dumps(result.to_dict(), indent=1).encode()
    tensors = {k: v.contiguous() for k, v in result.large_tensors().items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(out_dir / "results.json", payload)
    _atomic_write(out_dir / "tensors.safetensors", save(tensors))
    for stem, figure in figures.items():
        handle, temporary = tempfile.mkstemp(prefix=f".{stem}-", suffix=".png", dir=out_dir)
        os.close(handle)
        try:
            figure.savefig(temporary, dpi=110)
            os.replace(temporary, out_dir / f"{stem}.png")
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    console.print(
        f"wrote results.json, tensors.safetensors and {len(figures)} figures to {out_dir}"
    )
