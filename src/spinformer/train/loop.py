r"""The training loop: AdamW, warm-up + cosine schedule, clipping, evaluation, checkpoints, DDP.

One function, :func:`train`, runs a :class:`~spinformer.train.config.TrainConfig` into an output
directory, in one process or under ``torchrun --nproc_per_node=N`` (DistributedDataParallel,
gloo on CPU, nccl on GPU). Design choices that make a run reproducible and resumable:

* **Data order is a pure function of (seed, step).** Step s trains on the global batch
  ``task.train_batch(s)``; rank r of W takes rows [rB/W, (r+1)B/W). Nothing depends on iterator
  state, so a resumed run sees the batches an uninterrupted one would, and W ranks see the
  single-process batch. With equal rows per rank and a per-row-equal number of targets, the mean
  of the ranks' mean losses (DDP averages gradients) is the single-process loss: the runs agree
  up to floating-point reduction order.
* **Everything that evolves is checkpointed** (model, AdamW moments, scheduler, torch / numpy /
  Python random states, config) at ``checkpoint_every`` steps and at the end, atomically, the
  ``keep_last`` newest kept. Resuming on the same device continues bit for bit: the losses of
  N steps + resume + N steps equal those of 2N steps.
* **The host syncs once per log interval.** Losses and gradient norms stay on the device and are
  read together at log, evaluation and checkpoint steps (one all-reduce under DDP). A non-finite
  loss or gradient norm stops the run there with a message, before any checkpoint of the
  damaged weights is written: the last checkpoint on disk is the last good one.
* **Bad input fails before anything is written**: config, data, an output directory that holds
  another run, a corrupt or mismatched checkpoint.

The learning rate at step s (0-based) is lr·(s+1)/w during the w warm-up steps, then
lr·[r + (1−r)·½(1 + cos π p)] with p = (s − w)/(S − w) the fraction of the remaining S − w steps
done and r = ``min_lr_ratio`` (Loshchilov & Hutter, "SGDR", 2017; "Decoupled weight decay
regularization", 2019). Weight decay applies to matrices (embeddings, projections), not to
biases, norms or temperatures.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.console import Console
from torch import Tensor, nn

from spinformer._io import atomic_write
from spinformer._progress import counted_progress
from spinformer.train import models
from spinformer.train.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    restore,
    save_checkpoint,
)
from spinformer.train.config import RESUMABLE_KEYS, ConfigError, TrainConfig
from spinformer.train.tasks import IGNORE, Batch, Task, make_task

__all__ = ["RunDirError", "TrainResult", "evaluate", "lr_factor", "train"]

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"


class RunDirError(ValueError):
    """The output directory cannot take this run (holds another run, or nothing to resume)."""


@dataclass(frozen=True)
class TrainResult:
    """What a call to :func:`train` did.

    Attributes:
        out_dir: the run directory.
        step: optimizer steps completed (in total, including resumed ones).
        losses: training loss of every step this call ran (global batch mean), in order.
        evaluation: the last evaluation's metrics (``val_loss``, ``val_accuracy``, ...).
        parameters: trainable parameter count.
        status: ``"completed"`` (reached max_steps), ``"stopped"`` (reached ``stop_at``) or
            ``"nan"`` (a non-finite loss or gradient stopped it).
    """

    out_dir: Path
    step: int
    losses: list[float] = field(repr=False)
    evaluation: dict[str, float]
    parameters: int
    status: Literal["completed", "stopped", "nan"]


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the base learning rate at 0-based step ``step`` (module docstring)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def task_loss(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy of (B, N, V) / (B, C) logits against next-token / class targets."""
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=IGNORE,
        reduction=reduction,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: list[Batch], device: torch.device, bits: bool = False
) -> dict[str, float]:
    """Mean loss (nats per target), accuracy and, with ``bits``, bits per target over batches."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for batch in batches:
        inputs, targets = batch.inputs.to(device), batch.targets.to(device)
        logits = model(inputs)
        total += task_loss(logits, targets, reduction="sum").double()
        flat = logits.reshape(-1, logits.shape[-1]).argmax(-1)
        real = targets.reshape(-1) != IGNORE
        correct += (flat[real] == targets.reshape(-1)[real]).sum()
        count += int(real.sum())
    model.train(was_training)
    loss = float(total) / max(count, 1)
    metrics = {"loss": loss, "accuracy": float(correct) / max(count, 1)}
    if bits:
        metrics["bpc"] = loss / math.log(2.0)
    return metrics


def _device(choice: str, local_rank: int) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available")
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _config_diff(recorded: dict[str, Any], config: TrainConfig) -> dict[str, tuple[Any, Any]]:
    now = config.to_dict()
    keys = set(recorded) | set(now)
    return {k: (recorded.get(k), now.get(k)) for k in sorted(keys) if recorded.get(k) != now.get(k)}


def _describe(diff: dict[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())


def _check_out_dir(out: Path, config: TrainConfig, resume: bool) -> dict[str, Any] | None:
    """The recorded run in ``out`` (or None), after checking this run may use the directory."""
    run_file = out / RUN_FILE
    if run_file.is_file():
        try:
            recorded = json.loads(run_file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise RunDirError(f"--out {str(out)!r}: {RUN_FILE} is unreadable: {err}") from err
        diff = _config_diff(recorded.get("config", {}), config)
        if not resume:
            what = f"a different config ({_describe(diff)})" if diff else "this config"
            raise RunDirError(
                f"--out {str(out)!r} already holds a run of {what}; pass --resume to continue "
                "it or choose another --out"
            )
        fixed = {k: v for k, v in diff.items() if k not in RESUMABLE_KEYS}
        if fixed:
            raise RunDirError(
                f"--out {str(out)!r} holds another run: its config differs in {_describe(fixed)}"
                f" (only {sorted(RESUMABLE_KEYS)} may change on --resume)"
            )
        return recorded
    if resume:
        raise RunDirError(f"--resume: {str(out)!r} holds no run ({RUN_FILE} not found)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunDirError(
            f"--out {str(out)!r} exists and is not an empty directory (and holds no run)"
        )
    return None


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
        betas=(config.adam_beta1, config.adam_beta2),
    )


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the metric records of steps <= ``step`` (those after the checkpoint are redone)."""
    if not path.is_file():
        return
    kept = [
        line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step
    ]
    atomic_write(path, "".join(line + "\n" for line in kept).encode())


def train(
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    stop_at: int | None = None,
    progress: bool = True,
    console: Console | None = None,
    model_factory: Callable[[TrainConfig, Task], nn.Module] | None = None,
) -> TrainResult:
    """Train ``config`` into ``out_dir`` (``run.json``, ``metrics.jsonl``, ``checkpoints/``).

    Args:
        config: the run's configuration.
        out_dir: run directory: new or empty, or (with ``resume``) one holding this run.
        resume: continue from the newest checkpoint in ``out_dir`` (from step 0 when the run
            was started but never checkpointed).
        stop_at: stop after this many total steps, checkpointing there (a run in chunks); the
            schedule is still the one of ``max_steps``.
        progress: show a rich progress bar (rank 0).
        console: where messages go (default: a new rich console on stderr).
        model_factory: builds the model from (config, task) instead of
            :func:`spinformer.train.build_model` (an external model trained by the same loop).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank calls this; rank 0 logs and writes.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if stop_at is not None and (
        isinstance(stop_at, bool) or not isinstance(stop_at, int) or stop_at < 1
    ):
        raise ValueError(f"stop_at must be a positive integer or None, got {stop_at!r}")
    console = console or Console(stderr=True)
    out = Path(out_dir)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if config.batch_size % world:
        raise ConfigError(
            f"batch_size must be divisible by the number of ranks ({world}), got "
            f"{config.batch_size}"
        )
    # -- every check before anything is written --
    recorded = _check_out_dir(out, config, resume)
    task = make_task(config, cache_dir=out / "data")
    fingerprint = task.fingerprint()
    if recorded is not None and recorded.get("data") != fingerprint:
        raise RunDirError(
            f"--out {str(out)!r} holds a run on other data: recorded {recorded.get('data')}, "
            f"now {fingerprint}"
        )
    started_group = False
    if world > 1 and not dist.is_initialized():
        use_cuda = config.device == "cuda" or (
            config.device == "auto" and torch.cuda.is_available()
        )
        dist.init_process_group("nccl" if use_cuda else "gloo")
        started_group = True
    try:
        return _run(
            config, out, task, fingerprint, resume, stop_at, progress, console, world, model_factory
        )
    finally:
        if started_group:
            dist.destroy_process_group()


def _run(
    config: TrainConfig,
    out: Path,
    task: Task,
    fingerprint: dict[str, Any],
    resume: bool,
    stop_at: int | None,
    show_progress: bool,
    console: Console,
    world: int,
    model_factory: Callable[[TrainConfig, Task], nn.Module] | None = None,
) -> TrainResult:
    rank = dist.get_rank() if world > 1 else 0
    device = _device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    main = rank == 0
    torch.manual_seed(config.seed)
    model = (model_factory or models.build_model)(config, task).to(device)
    parameters = models.parameter_count(model)
    optimizer = _optimizer(model, config)
    schedule = partial(
        lr_factor,
        warmup_steps=config.warmup_steps,
        max_steps=config.max_steps,
        min_lr_ratio=config.min_lr_ratio,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    start = 0
    checkpoint = latest_checkpoint(out / CHECKPOINT_DIR) if resume else None
    if checkpoint is not None:
        loaded = load_checkpoint(checkpoint)
        diff = _config_diff(loaded.meta.get("config", {}), config)
        fixed = {k: v for k, v in diff.items() if k not in RESUMABLE_KEYS}
        if fixed:
            raise CheckpointError(
                f"checkpoint {str(checkpoint)!r} was written by another config: {_describe(fixed)}"
            )
        restore(loaded, model, optimizer, scheduler)
        # the schedule follows the config that runs now (max_steps may have changed)
        scheduler.lr_lambdas = [schedule] * len(optimizer.param_groups)
        start = loaded.step
        if start >= config.max_steps:
            raise RunDirError(
                f"--resume: the run in {str(out)!r} is at step {start}, max_steps is "
                f"{config.max_steps}; raise max_steps (--set max_steps=...) to train further"
            )
    if stop_at is not None and stop_at <= start:
        raise RunDirError(f"stop_at must be after the resumed step {start}, got {stop_at}")
    end = config.max_steps if stop_at is None else min(stop_at, config.max_steps)
    metrics_path = out / METRICS_FILE
    if main:
        atomic_write(
            out / RUN_FILE,
            json.dumps(
                {"config": config.to_dict(), "data": fingerprint, "parameters": parameters},
                indent=1,
            ).encode(),
        )
        _truncate_metrics(metrics_path, start)
        console.print(
            f"[bold]train[/] {config.task} / {config.model}: {parameters:,} parameters, "
            f"steps {start} -> {end} of {config.max_steps}, {world} process(es) on {device}"
        )
    if world > 1:
        dist.barrier()
        wrapped: nn.Module = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,  # e.g. K = 1 spin blocks leave the couplings unused
        )
    else:
        wrapped = model
    per_rank = config.batch_size // world
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    bits = task.name == "charlm"
    val_set = task.eval_set("val") if main else []
    params = [p for p in model.parameters() if p.requires_grad]
    clip = config.grad_clip if config.grad_clip > 0 else math.inf

    losses: list[float] = []
    evaluation: dict[str, float] = {}
    pending_loss: list[Tensor] = []
    pending_norm: list[Tensor] = []
    status: Literal["completed", "stopped", "nan"] = (
        "completed" if end == config.max_steps else ("stopped")
    )
    tokens_per_step = 0
    window_start, window_steps = time.perf_counter(), 0
    metrics_file = metrics_path.open("a") if main else None
    progress = counted_progress(
        "[bold]{task.description}",
        "loss {task.fields[loss]}",
        "{task.fields[speed]} tok/s",
        console=console,
        disable=not (show_progress and main),
        transient=False,
    )
    try:
        with progress:
            bar = progress.add_task(
                f"{config.task}/{config.model}", total=end, completed=start, loss="-", speed="-"
            )
            step = start
            for index in range(start, end):
                batch = task.train_batch(index, rows)
                inputs, targets = batch.inputs.to(device), batch.targets.to(device)
                tokens_per_step = inputs.numel() * world
                loss = task_loss(wrapped(inputs), targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(params, clip)
                optimizer.step()
                scheduler.step()
                pending_loss.append(loss.detach())
                pending_norm.append(norm.detach())
                step, window_steps = index + 1, window_steps + 1
                do_eval = step == end or (config.eval_every and step % config.eval_every == 0)
                do_save = step == end or (
                    config.checkpoint_every and step % config.checkpoint_every == 0
                )
                if not (do_eval or do_save or step % config.log_every == 0):
                    continue
                # -- one host sync per interval --
                window = torch.stack(pending_loss).float()
                if world > 1:
                    dist.all_reduce(window)
                    window /= world
                values = window.tolist()
                norms = torch.stack(pending_norm).float().tolist()
                pending_loss, pending_norm = [], []
                bad = [
                    step - len(values) + 1 + i
                    for i, (a, b) in enumerate(zip(values, norms, strict=True))
                    if not (math.isfinite(a) and math.isfinite(b))
                ]
                losses.extend(values)
                if bad:
                    status = "nan"
                    if main:
                        last = latest_checkpoint(out / CHECKPOINT_DIR)
                        kept = f"the last good checkpoint is {last}" if last else "no checkpoint"
                        console.print(
                            f"[bold red]stopped:[/] the loss or gradient became non-finite at "
                            f"step {bad[0]} (loss {values[bad[0] - step + len(values) - 1]}); "
                            f"{kept} (nothing after it was written). Lower lr or raise "
                            "warmup_steps, then resume or restart."
                        )
                    step = bad[0] - 1
                    break
                now = time.perf_counter()
                speed = tokens_per_step * window_steps / max(now - window_start, 1e-9)
                window_start, window_steps = now, 0
                record: dict[str, Any] = {
                    "step": step,
                    "loss": values[-1],
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": norms[-1],
                    "tokens": step * tokens_per_step,
                    "tokens_per_s": speed,
                }
                if do_eval and main:
                    evaluation = {
                        f"val_{k}": v for k, v in evaluate(model, val_set, device, bits).items()
                    }
                    if step == end:
                        test = evaluate(model, task.eval_set("test"), device, bits)
                        evaluation.update({f"test_{k}": v for k, v in test.items()})
                    record.update(evaluation)
                    window_start = time.perf_counter()  # evaluation is not training time
                if device.type == "cuda":
                    record["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
                if main:
                    assert metrics_file is not None
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                    progress.update(
                        bar, completed=step, loss=f"{values[-1]:.4f}", speed=f"{speed:,.0f}"
                    )
                    if do_save:
                        save_checkpoint(
                            out / CHECKPOINT_DIR,
                            step,
                            model,
                            optimizer,
                            scheduler,
                            config.to_dict(),
                            {"data": fingerprint, "parameters": parameters, "metrics": record},
                        )
                        prune_checkpoints(out / CHECKPOINT_DIR, config.keep_last)
    finally:
        if metrics_file is not None:
            metrics_file.close()
    if main and status != "nan":
        summary = ", ".join(f"{k} {v:.4g}" for k, v in evaluation.items())
        console.print(f"[bold]done[/] at step {step}: {summary}")
    return TrainResult(out, step, losses, evaluation, parameters, status)
