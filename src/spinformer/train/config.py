"""The training run's configuration: one frozen dataclass, loaded from a TOML preset + overrides.

Presets (``configs/train/*.toml``) are flat tables of the fields below; ``--set key=value`` on the
command line overrides them (nanoGPT's configurator, with checks). Every value is checked against
its field's annotation before anything runs: an unknown key is an error that suggests the nearest
field name ("did you mean"), a wrong type or an out-of-range value names the key and what was
expected. The recorded config of a run is ``dataclasses.asdict`` of the object that ran, so it
cannot drift from what trained.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from spinformer.nn.model import BLOCK_FACTORIES

__all__ = ["ConfigError", "TrainConfig", "load_config"]

ModelKind = Literal[tuple(BLOCK_FACTORIES)]  # type: ignore[valid-type]
TaskKind = Literal["recall", "digits", "charlm"]

#: Keys that may change when a run is resumed: they decide how long it runs and what it logs,
#: not what each step computes.
RESUMABLE_KEYS = frozenset(
    {"max_steps", "eval_every", "eval_batches", "checkpoint_every", "keep_last", "log_every"}
)


class ConfigError(ValueError):
    """A training configuration that cannot run (unknown key, wrong type, bad value)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run (validated on construction).

    Task:
        task: ``"recall"`` (associative recall), ``"digits"`` (scikit-learn ``load_digits``) or
            ``"charlm"`` (character-level language model).
        data_path: ``charlm`` only: a UTF-8 text file; empty for the English prose of CPython's
            ``pydoc_data.topics``.
        seq_len: ``charlm`` context length.
        num_pairs, num_keys, num_values: ``recall`` sequence k₁ v₁ … k_P v_P q.
        patch: ``digits`` tokens: 1 (64 pixel tokens, 17 grey levels) or 2 (16 tokens, one per
            2×2 patch, each pixel quantised to 3 levels: 81 patch ids).

    Model (:class:`spinformer.nn.SpinTransformer` with the block ``model``):
        model: ``"transformer"`` (reference block), ``"boltzmann"`` (BoltzmannAttention in a
            pre-norm block), ``"mean_field"`` (MeanFieldAttention), ``"spin"``
            (SpinTransformerBlock) or ``"free_energy"`` (FreeEnergyAttention).
        steps: mean-field steps K of the spin / mean-field blocks, ``0`` for the fixed point.
        order: 1 (naive) or 2 (second order) dynamical mean field of the spin block.
        onsager: reaction term of the mean-field block (``"none"``, ``"tap"``, ``"learned"``).
        ffn_field: the spin block's MLP field (the MLP of the other blocks); off, e.g., for an
            explicit second-order block without one.
        coupling, norm, start, residual: the spin block's design
            (:class:`spinformer.nn.SpinTransformerBlock`): ``"dot"`` or ``"cosine"`` couplings,
            ``"layer"`` or ``"rms"`` (per head, on the spin radius) normalisation, ``"zero"`` or
            ``"learned"`` initial magnetization, ``"add"`` (x + W_O m) or ``"magnetization"``
            (the stream carried as magnetizations).
        position: ``"absolute"`` (learned position embeddings) or ``"rotary"`` (spin blocks only:
            queries and keys rotated by position, no position embedding).

    Optimisation: AdamW (``lr``, ``weight_decay`` on matrices only, ``adam_beta1/2``), linear
    warm-up over ``warmup_steps`` then cosine decay to ``min_lr_ratio * lr`` at ``max_steps``,
    gradient norm clipped at ``grad_clip`` (0 disables). ``batch_size`` is the global batch
    (split evenly over data-parallel ranks).

    Run: ``log_every``/``eval_every``/``checkpoint_every`` in steps (0 disables the last two;
    the final step is always evaluated and checkpointed), ``eval_batches`` validation batches,
    ``keep_last`` checkpoints kept, ``device`` ``"auto"`` (CUDA when available), ``"cpu"`` or
    ``"cuda"``.
    """

    task: TaskKind = "recall"
    data_path: str = ""
    seq_len: int = 64
    num_pairs: int = 4
    num_keys: int = 8
    num_values: int = 8
    patch: int = 1
    model: ModelKind = "transformer"
    d_model: int = 32
    n_heads: int = 2
    n_layers: int = 2
    ffn_mult: int = 4
    beta: float = 1.0
    learn_beta: bool = True
    order: int = 1
    steps: int = 2
    onsager: Literal["none", "tap", "learned"] = "tap"
    ffn_field: bool = True
    coupling: Literal["dot", "cosine"] = "cosine"
    norm: Literal["layer", "rms"] = "rms"
    start: Literal["zero", "learned"] = "learned"
    residual: Literal["add", "magnetization"] = "magnetization"
    position: Literal["absolute", "rotary"] = "absolute"
    max_steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 8
    checkpoint_every: int = 100
    keep_last: int = 2
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            _check_type(value, hints[field.name], field.name)
            if hints[field.name] is float:
                object.__setattr__(self, field.name, float(value))  # lr = 1 is 1.0
        positive = (
            "seq_len",
            "num_pairs",
            "num_keys",
            "num_values",
            "d_model",
            "n_heads",
            "n_layers",
            "ffn_mult",
            "max_steps",
            "batch_size",
            "log_every",
            "eval_batches",
            "keep_last",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("steps", "warmup_steps", "eval_every", "checkpoint_every", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("lr", "beta"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("weight_decay", "grad_clip"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio!r}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must lie in [0, 1), got {getattr(self, name)!r}")
        if self.num_pairs > self.num_keys:
            raise ConfigError(
                f"num_pairs must be <= num_keys (keys are distinct), got {self.num_pairs} > "
                f"{self.num_keys}"
            )
        if self.order not in (1, 2):
            raise ConfigError(f"order must be 1 or 2, got {self.order!r}")
        if self.patch not in (1, 2):
            raise ConfigError(
                f"patch must be 1 (pixel tokens) or 2 (2x2 patches), got {self.patch}"
            )
        if self.data_path and self.task != "charlm":
            raise ConfigError(f"data_path is read by task 'charlm' only, got task {self.task!r}")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON/TOML values."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated, unknown keys rejected)."""
        return from_dict({**self.to_dict(), **changes})


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(TrainConfig))


def from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a :class:`TrainConfig`, rejecting unknown keys with the nearest known one."""
    names = field_names()
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"unknown key {key!r} in {source}{hint}")
    return TrainConfig(**values)


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Read a TOML preset (flat table of :class:`TrainConfig` fields) and apply ``overrides``."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            with path.open("rb") as handle:
                values = tomllib.load(handle)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {err}") from err
        nested = [k for k, v in values.items() if isinstance(v, dict)]
        if nested:
            raise ConfigError(
                f"config file {str(path)!r} must be a flat table of keys, got table(s) {nested}"
            )
        from_dict(values, source=str(path))  # unknown keys named with their file
    return from_dict({**values, **(overrides or {})}, source="overrides" if overrides else "config")


def _check_type(value: Any, annotation: Any, name: str) -> None:
    """Raise :class:`ConfigError` unless ``value`` fits the field annotation (no coercion except
    int -> float, so ``lr = 1`` is a float but ``max_steps = 1.5`` is an error)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        if value not in choices or type(value) is bool:
            raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")
        return
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                _check_type(value, option, name)
                return
            except ConfigError:
                continue
        raise ConfigError(f"{name} must be {annotation}, got {value!r}")
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, annotation)
    if not ok:
        raise ConfigError(
            f"{name} must be of type {annotation.__name__}, got {type(value).__name__} {value!r}"
        )
