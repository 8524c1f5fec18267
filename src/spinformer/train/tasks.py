"""Training tasks: one interface, a registry, all offline and seeded.

A task turns a config into token batches. The batch of training step ``s`` is a pure function of
``(seed, s)`` -- it is drawn from ``numpy.random.default_rng([seed, stream, s])`` -- so a resumed
run sees exactly the data an uninterrupted one would, whatever iterator state was lost, and the
global batch is the same whether one process draws all of it or ``W`` data-parallel ranks each
take their rows of it. Validation and test sets are fixed (independent of the run's seed), so
runs with different seeds are scored on the same examples.

* ``recall`` -- associative recall: k₁ v₁ … k_P v_P q with distinct keys and q one of them; the
  target is q's value, predicted at the last position (Ba et al., "Using fast weights to attend
  to the recent past", 2016). Chance accuracy 1/num_values.
* ``digits`` -- the 8×8 handwritten digits bundled with scikit-learn (``load_digits``, 1797
  images), as 64 pixel tokens (17 grey levels) or 16 patch tokens; a fixed 1437/180/180
  train/validation/test split; 10 classes, chance accuracy 0.1.
* ``charlm`` -- character-level language modelling on a UTF-8 text file, by default the English
  prose of CPython's ``pydoc_data.topics``. Characters are mapped to ids (the sorted set of the
  text's characters), stored as uint8 (≤ 256 symbols) or uint16 arrays and memory-mapped (as
  nanoGPT does), so a real corpus works the same way. The first 90 % is training, the next 5 %
  validation, the last 5 % test; the SHA-256 of the vocabulary and the split's token arrays is
  recorded with the results (``fingerprint``). Metric: bits per character.
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from spinformer._io import atomic_write
from spinformer.data import pydoc_prose
from spinformer.train.config import ConfigError, TrainConfig

__all__ = ["IGNORE", "TASKS", "Batch", "Task", "make_task", "register_task"]

IGNORE = -100  # target id that carries no loss (torch's cross_entropy ignore_index)
_EVAL_SEED = 20_231_115  # fixed validation/test data, independent of the run's seed
_STREAMS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class Batch:
    """Token ids (B, N) and targets: (B, N) next-token ids with :data:`IGNORE` where no loss is
    taken (``head="lm"``), or class ids (B,) (``head="classify"``)."""

    inputs: Tensor
    targets: Tensor


class Task(ABC):
    """A seeded source of training batches and fixed evaluation batches."""

    name: str
    vocab_size: int
    seq_len: int
    head: Literal["lm", "classify"]
    num_classes: int | None = None
    chance_accuracy: float

    def __init__(self, config: TrainConfig) -> None:
        self.seed = config.seed
        self.batch_size = config.batch_size
        self.eval_batches = config.eval_batches

    @abstractmethod
    def train_batch(self, step: int, rows: slice | None = None) -> Batch:
        """Rows ``rows`` (default all) of the global training batch of step ``step``."""

    @abstractmethod
    def eval_set(self, split: Literal["val", "test"]) -> list[Batch]:
        """The fixed evaluation batches of ``split``."""

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data (recorded with the run)."""
        return {"task": self.name, "vocab_size": self.vocab_size, "seq_len": self.seq_len}

    def _rng(self, split: str, index: int) -> np.random.Generator:
        base = self.seed if split == "train" else _EVAL_SEED
        return np.random.default_rng([base, _STREAMS[split], index])


TASKS: dict[str, Callable[[TrainConfig, Path | None], Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator adding a task to :data:`TASKS` under ``name``."""

    def add(cls: type[Task]) -> type[Task]:
        TASKS[name] = cls  # type: ignore[assignment]
        cls.name = name
        return cls

    return add


def make_task(config: TrainConfig, cache_dir: str | Path | None = None) -> Task:
    """The task named by ``config.task``; ``cache_dir`` holds prepared token arrays (charlm)."""
    if config.task not in TASKS:
        raise ConfigError(f"task must be one of {sorted(TASKS)}, got {config.task!r}")
    return TASKS[config.task](config, None if cache_dir is None else Path(cache_dir))


def _long(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))


@register_task("recall")
class AssociativeRecall(Task):
    """k₁ v₁ … k_P v_P q → value of q; keys are ids [0, K), values [K, K + V)."""

    head = "lm"

    def __init__(self, config: TrainConfig, cache_dir: Path | None = None) -> None:
        super().__init__(config)
        self.num_pairs, self.num_keys = config.num_pairs, config.num_keys
        self.num_values = config.num_values
        self.vocab_size = self.num_keys + self.num_values
        self.seq_len = 2 * self.num_pairs + 1
        self.chance_accuracy = 1.0 / self.num_values

    def _sample(self, rng: np.random.Generator, batch: int) -> Batch:
        keys = np.argsort(rng.random((batch, self.num_keys)), axis=1)[:, : self.num_pairs]
        values = self.num_keys + rng.integers(0, self.num_values, (batch, self.num_pairs))
        pick = rng.integers(0, self.num_pairs, batch)
        rows = np.arange(batch)
        tokens = np.stack([keys, values], axis=-1).reshape(batch, 2 * self.num_pairs)
        tokens = np.concatenate([tokens, keys[rows, pick][:, None]], axis=1)
        targets = np.full((batch, self.seq_len), IGNORE)
        targets[:, -1] = values[rows, pick]
        return Batch(_long(tokens), _long(targets))

    def train_batch(self, step: int, rows: slice | None = None) -> Batch:
        batch = self._sample(self._rng("train", step), self.batch_size)
        return batch if rows is None else Batch(batch.inputs[rows], batch.targets[rows])

    def eval_set(self, split: Literal["val", "test"]) -> list[Batch]:
        return [
            self._sample(self._rng(split, i), self.batch_size) for i in range(self.eval_batches)
        ]

    def fingerprint(self) -> dict[str, Any]:
        return {
            **super().fingerprint(),
            "num_pairs": self.num_pairs,
            "num_keys": self.num_keys,
            "num_values": self.num_values,
        }


@lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError("task 'digits' needs scikit-learn: pip install scikit-learn") from err
    data = load_digits()
    return data.images.astype(np.int64), data.target.astype(np.int64)


@register_task("digits")
class Digits(Task):
    """8×8 digit images as pixel tokens (grey level 0..16) or 2×2 patch tokens (3 levels/pixel)."""

    head = "classify"
    num_classes = 10
    chance_accuracy = 0.1
    SPLIT = (1437, 180, 180)  # train / validation / test, a fixed permutation (seed 0)

    def __init__(self, config: TrainConfig, cache_dir: Path | None = None) -> None:
        super().__init__(config)
        images, labels = _load_digits()
        self.patch = config.patch
        if self.patch == 1:
            tokens = images.reshape(len(images), 64)
            self.vocab_size = 17
        else:
            levels = np.rint(images / 8.0).astype(np.int64)  # 0..16 -> 0, 1, 2
            blocks = levels.reshape(-1, 4, 2, 4, 2).transpose(0, 1, 3, 2, 4).reshape(-1, 16, 4)
            tokens = (blocks * 3 ** np.arange(4)).sum(-1)
            self.vocab_size = 81
        self.seq_len = tokens.shape[1]
        order = np.random.default_rng(0).permutation(len(images))
        n_train, n_val, _ = self.SPLIT
        bounds = {
            "train": order[:n_train],
            "val": order[n_train : n_train + n_val],
            "test": order[n_train + n_val :],
        }
        self.tokens, self.labels, self.splits = tokens, labels, bounds

    @lru_cache(maxsize=4)  # noqa: B019 (a task lives as long as its run)
    def _epoch(self, epoch: int) -> np.ndarray:
        return self._rng("train", epoch).permutation(len(self.splits["train"]))

    def train_batch(self, step: int, rows: slice | None = None) -> Batch:
        """Epochs of the training set in a seeded order: sample g = step·B + i is position
        g mod n of epoch g // n's permutation -- a pure function of (seed, step)."""
        n = len(self.splits["train"])
        flat = step * self.batch_size + np.arange(self.batch_size)
        if rows is not None:
            flat = flat[rows]
        epochs, positions = np.divmod(flat, n)
        picked = np.array([self._epoch(int(e))[p] for e, p in zip(epochs, positions, strict=True)])
        index = self.splits["train"][picked]
        return Batch(_long(self.tokens[index]), _long(self.labels[index]))

    def eval_set(self, split: Literal["val", "test"]) -> list[Batch]:
        index = self.splits[split]
        return [
            Batch(_long(self.tokens[chunk]), _long(self.labels[chunk]))
            for chunk in np.array_split(index, math.ceil(len(index) / self.batch_size))
        ]

    def fingerprint(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for split in ("train", "val", "test"):
            digest.update(self.splits[split].astype(np.int64).tobytes())
        return {**super().fingerprint(), "patch": self.patch, "split_sha256": digest.hexdigest()}


@register_task("charlm")
class CharLM(Task):
    """Next-character prediction on a text split 90/5/5; windows of ``seq_len`` + 1 characters."""

    head = "lm"
    FRACTIONS = (0.9, 0.05)

    def __init__(self, config: TrainConfig, cache_dir: Path | None = None) -> None:
        super().__init__(config)
        self.seq_len = config.seq_len
        self.source = config.data_path or "pydoc_data.topics"
        text = self._read(config.data_path)
        vocab = "".join(sorted(set(text)))
        if len(vocab) > 65536:
            raise ConfigError(
                f"data_path {config.data_path!r} has {len(vocab)} distinct characters; at most "
                "65536 fit a uint16 token array"
            )
        self.vocab, self.vocab_size = vocab, len(vocab)
        self.chance_accuracy = 1.0 / self.vocab_size
        dtype = np.uint8 if len(vocab) <= 256 else np.uint16
        ids = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = np.zeros(max(map(ord, vocab)) + 1, dtype=dtype)
        table[[ord(c) for c in vocab]] = np.arange(len(vocab), dtype=dtype)
        tokens = table[ids]
        n = len(tokens)
        cut1, cut2 = int(n * self.FRACTIONS[0]), int(n * sum(self.FRACTIONS))
        pieces = {"train": tokens[:cut1], "val": tokens[cut1:cut2], "test": tokens[cut2:]}
        digest = hashlib.sha256(vocab.encode("utf-8"))
        for split in ("train", "val", "test"):
            digest.update(split.encode() + len(pieces[split]).to_bytes(8, "little"))
            digest.update(pieces[split].tobytes())
        self.split_sha256 = digest.hexdigest()
        for split, piece in pieces.items():
            if len(piece) < self.seq_len + 2:
                raise ConfigError(
                    f"data_path {self.source!r}: the {split} split has {len(piece)} characters, "
                    f"fewer than seq_len + 2 = {self.seq_len + 2}"
                )
        self._pieces, self._cache_dir, self._dtype = pieces, cache_dir, dtype
        self._splits: dict[str, np.ndarray] | None = None

    @property
    def splits(self) -> dict[str, np.ndarray]:
        """The token arrays; with a cache directory, memory-mapped files written on first use
        (so building the task -- and checking its fingerprint -- writes nothing)."""
        if self._splits is None:
            if self._cache_dir is None:
                self._splits = self._pieces
            else:
                self._splits = self._memmap(self._pieces, self._cache_dir, self._dtype)
                self._pieces = {}
        return self._splits

    @staticmethod
    def _read(data_path: str) -> str:
        if not data_path:
            return pydoc_prose()
        path = Path(data_path)
        if not path.is_file():
            raise ConfigError(f"data_path {data_path!r} does not exist or is not a file")
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"data_path {data_path!r} is not UTF-8 text: {err}") from err

    def _memmap(
        self, pieces: dict[str, np.ndarray], cache_dir: Path, dtype: type
    ) -> dict[str, np.ndarray]:
        """Token arrays as ``<hash>.<split>.bin`` files (written once, atomically), memory-mapped."""
        stem = f"charlm-{self.split_sha256[:16]}"
        meta = cache_dir / f"{stem}.json"
        if not meta.is_file():
            for split, piece in pieces.items():
                atomic_write(cache_dir / f"{stem}.{split}.bin", piece.tobytes())
            info = {"source": self.source, "vocab": self.vocab, "dtype": np.dtype(dtype).name}
            atomic_write(meta, json.dumps({**info, "split_sha256": self.split_sha256}).encode())
        return {
            split: np.memmap(cache_dir / f"{stem}.{split}.bin", dtype=dtype, mode="r")
            for split in pieces
        }

    def _windows(self, data: np.ndarray, starts: np.ndarray) -> Batch:
        index = starts[:, None] + np.arange(self.seq_len + 1)
        window = np.asarray(data[index], dtype=np.int64)
        return Batch(_long(window[:, :-1]), _long(window[:, 1:]))

    def train_batch(self, step: int, rows: slice | None = None) -> Batch:
        data = self.splits["train"]
        starts = self._rng("train", step).integers(0, len(data) - self.seq_len, self.batch_size)
        return self._windows(data, starts if rows is None else starts[rows])

    def eval_set(self, split: Literal["val", "test"]) -> list[Batch]:
        """Consecutive non-overlapping windows from the split's start (at most eval_batches)."""
        data = self.splits[split]
        starts = np.arange(0, len(data) - self.seq_len, self.seq_len)
        starts = starts[: self.eval_batches * self.batch_size]
        return [
            self._windows(data, starts[i : i + self.batch_size])
            for i in range(0, len(starts), self.batch_size)
        ]

    def fingerprint(self) -> dict[str, Any]:
        return {**super().fingerprint(), "source": self.source, "split_sha256": self.split_sha256}
