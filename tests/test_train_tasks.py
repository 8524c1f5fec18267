"""Training tasks: shapes, targets decoded independently, determinism in (seed, step), splits."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from spinformer.train import TASKS, ConfigError, TrainConfig, make_task
from spinformer.train.tasks import IGNORE, pydoc_prose


def test_registry_lists_the_tasks():
    assert {"recall", "digits", "charlm"} <= set(TASKS)


def test_recall_targets_are_the_value_of_the_query_key():
    config = TrainConfig(task="recall", num_pairs=4, num_keys=8, num_values=6, batch_size=64)
    task = make_task(config)
    batch = task.train_batch(5)
    assert batch.inputs.shape == (64, 9) and batch.targets.shape == (64, 9)
    assert task.vocab_size == 14 and task.head == "lm"
    for tokens, targets in zip(batch.inputs.tolist(), batch.targets.tolist(), strict=True):
        keys, values, query = tokens[0:8:2], tokens[1:8:2], tokens[8]
        assert len(set(keys)) == 4 and all(0 <= k < 8 for k in keys)
        assert all(8 <= v < 14 for v in values)
        assert targets[:-1] == [IGNORE] * 8
        assert targets[-1] == dict(zip(keys, values, strict=True))[query]


@pytest.mark.parametrize("name", ["recall", "digits", "charlm"])
def test_training_batches_are_a_pure_function_of_seed_and_step(name):
    if name == "digits":
        pytest.importorskip("sklearn")
    config = TrainConfig(task=name, batch_size=12, seed=3)
    a, b = make_task(config), make_task(config)
    first = a.train_batch(7)
    b.train_batch(2)  # iterator state must not matter
    again = b.train_batch(7)
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.targets, again.targets)
    assert not torch.equal(first.inputs, a.train_batch(8).inputs)
    other = make_task(config.replace(seed=4)).train_batch(7)
    assert not torch.equal(first.inputs, other.inputs)
    # rank shards are rows of the global batch
    half = a.train_batch(7, slice(6, 12))
    assert torch.equal(half.inputs, first.inputs[6:12])
    # validation does not depend on the run's seed
    val_a = a.eval_set("val")[0].inputs
    val_b = make_task(config.replace(seed=9)).eval_set("val")[0].inputs
    assert torch.equal(val_a, val_b)


def test_digits_split_and_tokens():
    sklearn = pytest.importorskip("sklearn.datasets")
    data = sklearn.load_digits()
    task = make_task(TrainConfig(task="digits", batch_size=50))
    splits = task.splits
    assert [len(splits[s]) for s in ("train", "val", "test")] == [1437, 180, 180]
    together = np.concatenate([splits[s] for s in ("train", "val", "test")])
    assert sorted(together.tolist()) == list(range(1797))  # disjoint and complete
    val = task.eval_set("val")
    assert sum(len(b.targets) for b in val) == 180
    index = splits["val"][: len(val[0].targets)]
    assert torch.equal(val[0].inputs, torch.as_tensor(data.images[index].reshape(-1, 64)).long())
    assert torch.equal(val[0].targets, torch.as_tensor(data.target[index]).long())
    # the first epoch's batches (28 of 50 rows) visit 1400 distinct training images
    rows = torch.cat([task.train_batch(step).inputs for step in range(28)])
    assert len(rows) == 1400
    expected = data.images[splits["train"]].reshape(-1, 64)
    expected_rows = {tuple(r) for r in expected.tolist()}
    assert {tuple(r) for r in rows.tolist()} <= expected_rows


def test_digit_patches_decode_to_quantised_pixels():
    """Patch id = Σ_k level_k 3^k over the 2×2 block, level = round(pixel / 8) (per-pixel loop)."""
    sklearn = pytest.importorskip("sklearn.datasets")
    images = sklearn.load_digits().images
    task = make_task(TrainConfig(task="digits", patch=2, batch_size=4))
    assert task.vocab_size == 81 and task.seq_len == 16
    batch = task.eval_set("test")[0]
    for row_in_batch in range(4):
        image = images[task.splits["test"][row_in_batch]]
        for patch in range(16):
            r, c = divmod(patch, 4)
            pixels = image[2 * r : 2 * r + 2, 2 * c : 2 * c + 2].reshape(-1)
            token = int(batch.inputs[row_in_batch, patch])
            assert [token // 3**k % 3 for k in range(4)] == [round(p / 8) for p in pixels]


def test_charlm_user_file_roundtrip_and_memmap(tmp_path):
    text = "the quick brown fox jumps over the lazy dog. " * 40
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    config = TrainConfig(task="charlm", data_path=str(path), seq_len=16, batch_size=8)
    task = make_task(config, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()  # nothing written until data are used
    batch = task.train_batch(3)
    assert isinstance(task.splits["train"], np.memmap) and task.splits["train"].dtype == np.uint8
    assert batch.inputs.shape == (8, 16)
    decode = "".join
    for x, y in zip(batch.inputs.tolist(), batch.targets.tolist(), strict=True):
        window = decode(task.vocab[i] for i in x)
        assert window in text[: int(len(text) * 0.9)]
        assert decode(task.vocab[i] for i in y)[:-1] == window[1:]  # shifted by one
    assert task.vocab == "".join(sorted(set(text)))
    # the recorded hash changes with the text and not otherwise
    same = make_task(config)
    assert same.split_sha256 == task.split_sha256
    path.write_text(text.replace("dog", "cat"), encoding="utf-8")
    assert make_task(config).split_sha256 != task.split_sha256
    # more than 256 symbols: uint16
    path.write_text("".join(chr(0x400 + i) for i in range(300)) * 3, encoding="utf-8")
    wide = make_task(config, cache_dir=tmp_path / "c2")
    wide.train_batch(0)
    assert wide.splits["train"].dtype == np.uint16 and wide.vocab_size == 300


def test_charlm_pydoc_default_and_hash():
    task = make_task(TrainConfig(task="charlm", seq_len=32, batch_size=4, eval_batches=2))
    text = pydoc_prose()
    assert task.vocab_size == len(set(text))
    train_len = len(task.splits["train"])
    assert train_len == int(len(text) * 0.9)
    start = "".join(task.vocab[i] for i in task.splits["val"][:50])
    assert start == text[train_len : train_len + 50]
    assert task.fingerprint()["split_sha256"] == make_task(TrainConfig(task="charlm")).split_sha256
    val = task.eval_set("val")
    assert len(val) == 2 and val[0].inputs.shape == (4, 32)
    assert hashlib.sha256(text.encode()).hexdigest() != task.split_sha256  # vocab + splits hashed


def test_charlm_bad_files(tmp_path):
    with pytest.raises(ConfigError, match=r"data_path '.*missing\.txt' does not exist"):
        make_task(TrainConfig(task="charlm", data_path=str(tmp_path / "missing.txt")))
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\xff\xfe\x00\x80" * 100)
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        make_task(TrainConfig(task="charlm", data_path=str(binary)))
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(ConfigError, match="fewer than seq_len"):
        make_task(TrainConfig(task="charlm", data_path=str(short)))


def test_digits_without_scikit_learn_names_the_install(monkeypatch):
    import sys

    from spinformer.train import tasks

    tasks._load_digits.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # import fails
    try:
        with pytest.raises(ImportError, match="pip install scikit-learn"):
            make_task(TrainConfig(task="digits"))
    finally:
        tasks._load_digits.cache_clear()
