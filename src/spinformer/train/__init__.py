"""Training spin-model transformers against the vanilla block: tasks, config, loop, checkpoints.

``spinformer train --config configs/train/recall.toml --out runs/recall`` (or
:func:`train` from Python) trains the stack the config's ``model`` key selects on one of the
registered tasks, resumable bit for bit and data-parallel under ``torchrun``. Layering: this
package sits above :mod:`spinformer.nn` and below the experiments and the command line.
"""

from spinformer.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from spinformer.train.config import ConfigError, TrainConfig, load_config
from spinformer.train.loop import RunDirError, TrainResult, evaluate, lr_factor, train
from spinformer.train.models import MODELS, build_model, parameter_count
from spinformer.train.tasks import TASKS, Batch, Task, make_task, register_task

__all__ = [
    "MODELS",
    "TASKS",
    "Batch",
    "CheckpointError",
    "ConfigError",
    "RunDirError",
    "Task",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "evaluate",
    "latest_checkpoint",
    "load_checkpoint",
    "load_config",
    "lr_factor",
    "make_task",
    "parameter_count",
    "register_task",
    "train",
]
