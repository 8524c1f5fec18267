"""Checkpoints: every tensor in one safetensors file, everything else in a JSON file beside it.

``step-00000100.safetensors`` holds the model (``model.*``), the optimizer's per-parameter state
(``optimizer.<index>.<name>``) and the torch/CUDA/numpy random states (``rng.*``);
``step-00000100.json`` holds the config, the step, the optimizer's hyper-parameters and scalar
state, the scheduler, Python's random state and the SHA-256 of the tensor file. Both are written
to a temporary file and renamed (``os.replace``, atomic on POSIX), tensors first: a checkpoint
exists once its JSON exists, and a crash mid-write leaves the previous checkpoint intact. Loading
re-hashes the tensor file, so a truncated or altered checkpoint is an error, never a silently
different run.
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from spinformer._io import atomic_write, file_sha256

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "save_checkpoint",
]

FORMAT = "spinformer-train-checkpoint/1"
_NAME = re.compile(r"^step-(\d{8,})\.json$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not fit the model / config being resumed."""


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: its tensors and its JSON record."""

    path: Path
    step: int
    tensors: dict[str, Tensor]
    meta: dict[str, Any]


def _rng_tensors() -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = state
    numpy_state = np.random.get_state(legacy=False)
    tensors["rng.numpy.key"] = torch.from_numpy(numpy_state["state"]["key"].astype(np.int64))
    meta = {
        "numpy": {k: v for k, v in numpy_state.items() if k != "state"}
        | {"pos": int(numpy_state["state"]["pos"])},
        "python": random.getstate(),
    }
    return tensors, meta


def _restore_rng(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    numpy_meta = dict(meta["numpy"])
    pos = numpy_meta.pop("pos")
    key = tensors["rng.numpy.key"].numpy().astype(np.uint32)
    np.random.set_state({**numpy_meta, "state": {"key": key, "pos": pos}})
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(
    directory: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint of ``step`` into ``directory``; returns the JSON record's path."""
    directory = Path(directory)
    stem = f"step-{step:08d}"
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in optim["state"].items():
        for name, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    rng_tensors, rng_meta = _rng_tensors()
    tensors.update(rng_tensors)
    tensor_path = directory / f"{stem}.safetensors"
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{stem}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": FORMAT, "step": str(step)})
        os.replace(tmp, tensor_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    record = {
        "format": FORMAT,
        "step": step,
        "config": config,
        "tensors_sha256": file_sha256(tensor_path),
        "optimizer": {"param_groups": optim["param_groups"], "scalars": scalars},
        "scheduler": scheduler.state_dict(),
        "rng": rng_meta,
        **(extra or {}),
    }
    json_path = directory / f"{stem}.json"
    atomic_write(json_path, json.dumps(record, indent=1).encode())
    return json_path


def list_checkpoints(directory: str | Path) -> list[Path]:
    """JSON records of the checkpoints in ``directory``, oldest step first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))  # type: ignore[union-attr]


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The JSON record of the newest checkpoint, or ``None``."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints (record first, then tensors)."""
    for record in list_checkpoints(directory)[:-keep]:
        record.unlink(missing_ok=True)
        record.with_suffix(".safetensors").unlink(missing_ok=True)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint from its JSON record path."""
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint record {str(path)!r} is unreadable: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a spinformer training checkpoint ({FORMAT})")
    tensor_path = path.with_suffix(".safetensors")
    if not tensor_path.is_file():
        raise CheckpointError(f"checkpoint tensors {str(tensor_path)!r} are missing")
    if file_sha256(tensor_path) != meta.get("tensors_sha256"):
        raise CheckpointError(
            f"checkpoint tensors {str(tensor_path)!r} are corrupt (SHA-256 differs from the one "
            f"recorded in {path.name})"
        )
    try:
        tensors = load_file(tensor_path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint tensors {str(tensor_path)!r} unreadable: {err}") from err
    return Checkpoint(path, int(meta["step"]), tensors, meta)


def restore(
    checkpoint: Checkpoint,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    """Load model, optimizer, scheduler and random states, after checking that they fit."""
    tensors, meta = checkpoint.tensors, checkpoint.meta
    saved = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    current = model.state_dict()
    missing = sorted(set(current) - set(saved))
    unexpected = sorted(set(saved) - set(current))
    shapes = [
        f"{k}: checkpoint {tuple(saved[k].shape)}, model {tuple(v.shape)}"
        for k, v in current.items()
        if k in saved and saved[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"checkpoint {str(checkpoint.path)!r} does not fit the model: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}"
        )
    model.load_state_dict(saved)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, scalars in meta["optimizer"]["scalars"].items():
        state.setdefault(int(index), {}).update(scalars)
    groups = meta["optimizer"]["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as err:
        raise CheckpointError(
            f"checkpoint {str(checkpoint.path)!r} optimizer state does not fit: {err}"
        ) from err
    scheduler.load_state_dict(meta["scheduler"])
    _restore_rng(tensors, meta["rng"])
