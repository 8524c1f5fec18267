"""``spinformer train``: train a config (preset TOML + ``--set`` overrides) into a run directory.

Example: spinformer train --config configs/train/recall.toml --set model=spin --out runs/r1

Data-parallel: torchrun --standalone --nproc_per_node=2 --no-python spinformer train ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from spinformer.cli._app import app, console, fail, parse_overrides


@app.command("train")
def train_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="Preset TOML file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (new or empty).")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Config override key=value (repeatable)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")
    ] = False,
    stop_at: Annotated[
        int | None,
        typer.Option("--stop-at", help="Stop (and checkpoint) after this many total steps."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show the progress bar.")] = True,
) -> None:
    """Train the model the config selects; writes run.json, metrics.jsonl and checkpoints/.

    Keys: see spinformer.train.TrainConfig (model, task, max_steps, eval_every,
    checkpoint_every, seed, lr, batch_size, ...). A non-finite loss stops the run with exit
    status 1 and keeps the last good checkpoint.
    """
    from spinformer.train import CheckpointError, ConfigError, RunDirError, load_config, train

    overrides = parse_overrides(set_)
    try:
        run = load_config(config, overrides)
        result = train(run, out, resume=resume, stop_at=stop_at, progress=progress, console=console)
    except (ConfigError, RunDirError, CheckpointError, ImportError, TypeError) as err:
        fail(str(err))
        return
    if result.status == "nan":
        raise typer.Exit(code=1)
