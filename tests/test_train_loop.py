"""Training loop: bit-exact resume, NaN stop, checkpoint integrity, run-directory checks, models."""

from __future__ import annotations

import json
import math

import pytest
import torch

from spinformer.train import (
    MODELS,
    CheckpointError,
    RunDirError,
    TrainConfig,
    build_model,
    latest_checkpoint,
    load_checkpoint,
    make_task,
    parameter_count,
    train,
)
from spinformer.train import models as train_models
from spinformer.train.checkpoint import restore
from spinformer.train.loop import _optimizer

TINY = dict(
    d_model=16,
    n_heads=2,
    n_layers=1,
    batch_size=8,
    max_steps=8,
    warmup_steps=2,
    log_every=1,
    eval_every=4,
    eval_batches=1,
    checkpoint_every=2,
    keep_last=2,
    device="cpu",
)


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _snapshot(directory):
    return {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "changes", [{"model": "transformer"}, {"model": "spin", "steps": 2, "order": 2}]
)
def test_resume_is_bit_exact(tmp_path, one_thread, changes):
    """N steps + --resume + N steps == 2N uninterrupted steps, loss for loss (and weights)."""
    config = TrainConfig(**TINY, **changes)
    whole = train(config, tmp_path / "whole", progress=False)
    assert whole.status == "completed" and len(whole.losses) == 8
    first = train(config, tmp_path / "split", stop_at=4, progress=False)
    assert first.status == "stopped" and first.step == 4
    second = train(config, tmp_path / "split", resume=True, progress=False)
    assert second.step == 8 and len(second.losses) == 4
    assert first.losses + second.losses == whole.losses  # exact float equality
    assert _losses(tmp_path / "split") == _losses(tmp_path / "whole")
    end_whole = load_checkpoint(latest_checkpoint(tmp_path / "whole" / "checkpoints"))
    end_split = load_checkpoint(latest_checkpoint(tmp_path / "split" / "checkpoints"))
    for key, value in end_whole.tensors.items():
        assert torch.equal(value, end_split.tensors[key]), key
    assert whole.evaluation == second.evaluation
    # written atomically: no temporary files left behind
    assert not [p for p in (tmp_path / "split").rglob(".*") if p.is_file()]
    # keep-last-k: two checkpoints remain, the newest at the end
    names = sorted(p.name for p in (tmp_path / "whole" / "checkpoints").glob("*.json"))
    assert names == ["step-00000006.json", "step-00000008.json"]


def test_resume_after_a_lost_tail_redoes_it(tmp_path, one_thread):
    """Metrics logged after the last checkpoint (lost in a crash) are dropped and recomputed."""
    config = TrainConfig(**{**TINY, "checkpoint_every": 3})
    whole = train(config, tmp_path / "whole", progress=False)
    part = train(config, tmp_path / "crash", stop_at=5, progress=False)
    # simulate a crash after step 5 before its checkpoint: drop step 5's checkpoint
    latest = latest_checkpoint(tmp_path / "crash" / "checkpoints")
    assert latest.name == "step-00000005.json"
    latest.unlink()
    latest.with_suffix(".safetensors").unlink()
    resumed = train(config, tmp_path / "crash", resume=True, progress=False)
    assert part.losses[:3] + resumed.losses == whole.losses
    assert _losses(tmp_path / "crash") == _losses(tmp_path / "whole")


class _PoisonAfter(torch.nn.Module):
    """Wraps a model; from the ``after``-th training forward on, its logits are NaN."""

    def __init__(self, model, after):
        super().__init__()
        self.model, self.after, self.calls = model, after, 0

    def forward(self, tokens):
        logits = self.model(tokens)
        if self.training:
            self.calls += 1
            if self.calls >= self.after:
                return logits * float("nan")
        return logits


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    build = train_models.build_model
    monkeypatch.setattr(train_models, "build_model", lambda c, t: _PoisonAfter(build(c, t), 6))
    config = TrainConfig(**{**TINY, "log_every": 3, "checkpoint_every": 4})
    result = train(config, tmp_path / "run", progress=False)
    assert result.status == "nan" and result.step == 5
    assert math.isnan(result.losses[5]) and all(math.isfinite(x) for x in result.losses[:5])
    latest = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert latest.name == "step-00000004.json"
    checkpoint = load_checkpoint(latest)
    assert all(bool(torch.isfinite(t.float()).all()) for t in checkpoint.tensors.values())
    steps = [
        json.loads(x)["step"] for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [3, 4]  # nothing logged after the failure
    assert "non-finite at step 6" in capsys.readouterr().err.replace("\n", " ")


def test_corrupt_or_mismatched_checkpoint_fails_before_writing(tmp_path, one_thread):
    config = TrainConfig(**TINY)
    out = tmp_path / "run"
    train(config, out, stop_at=4, progress=False)
    tensors = latest_checkpoint(out / "checkpoints").with_suffix(".safetensors")
    data = bytearray(tensors.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tensors.write_bytes(bytes(data))
    before = _snapshot(out)
    with pytest.raises(CheckpointError, match=r"step-00000004\.safetensors.*corrupt"):
        train(config, out, resume=True, progress=False)
    assert _snapshot(out) == before
    tensors.write_bytes(
        bytes(
            data[: len(data) // 2]
            + bytearray([data[len(data) // 2] ^ 0xFF])
            + data[len(data) // 2 + 1 :]
        )
    )  # restore the original bytes
    # a record written by another config (the run record says otherwise)
    record = latest_checkpoint(out / "checkpoints")
    original = record.read_text()
    meta = json.loads(original)
    meta["config"]["d_model"] = 32
    record.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"written by another config: d_model: 32 -> 16"):
        train(config, out, resume=True, progress=False)
    # a truncated JSON record
    record.write_text(record.read_text()[:40])
    with pytest.raises(CheckpointError, match="unreadable"):
        train(config, out, resume=True, progress=False)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    small = TrainConfig(**TINY)
    task = make_task(small)
    torch.manual_seed(0)
    model = build_model(small, task)
    optimizer = _optimizer(model, small)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    from spinformer.train.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path, 1, model, optimizer, scheduler, small.to_dict())
    wide = small.replace(d_model=32)
    other = build_model(wide, task)
    with pytest.raises(CheckpointError, match=r"does not fit the model.*shape mismatches"):
        restore(load_checkpoint(path), other, _optimizer(other, wide), scheduler)


def test_output_directory_of_another_run_is_refused(tmp_path, one_thread):
    config = TrainConfig(**{**TINY, "max_steps": 2})
    out = tmp_path / "run"
    train(config, out, progress=False)
    before = _snapshot(out)
    with pytest.raises(RunDirError, match=r"different config \(lr: 0\.003 -> 0\.01\)"):
        train(config.replace(lr=0.01), out, progress=False)
    with pytest.raises(RunDirError, match=r"differs in lr: 0\.003 -> 0\.01"):
        train(config.replace(lr=0.01), out, resume=True, progress=False)
    with pytest.raises(RunDirError, match="already holds a run of this config; pass --resume"):
        train(config, out, progress=False)
    with pytest.raises(RunDirError, match="raise max_steps"):
        train(config, out, resume=True, progress=False)
    assert _snapshot(out) == before
    with pytest.raises(RunDirError, match="holds no run"):
        train(config, tmp_path / "empty", resume=True, progress=False)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not an empty directory"):
        train(config, stray, progress=False)
    assert not (tmp_path / "empty").exists() and sorted(p.name for p in stray.iterdir()) == [
        "notes.txt"
    ]
    # a longer schedule may be resumed (max_steps is a resumable key)
    longer = train(config.replace(max_steps=3), out, resume=True, progress=False)
    assert longer.step == 3 and len(longer.losses) == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"model": "transformer"},
        {"model": "boltzmann"},
        {"model": "mean_field", "steps": 2},
        {"model": "mean_field", "steps": 0},
        {"model": "spin", "steps": 1, "order": 1},
        {"model": "spin", "steps": 2, "order": 1},
        {"model": "spin", "steps": 2, "order": 2},
        {"model": "spin", "steps": 0, "order": 1},
        {"model": "free_energy"},
    ],
)
def test_every_model_kind_builds_and_takes_a_step(changes):
    config = TrainConfig(**{**TINY, **changes})
    task = make_task(config)
    torch.manual_seed(0)
    model = build_model(config, task)
    count = parameter_count(model)
    assert count == sum(p.numel() for p in model.parameters()) > 0
    batch = task.train_batch(0)
    logits = model(batch.inputs)
    assert logits.shape == (*batch.inputs.shape, task.vocab_size)
    torch.nn.functional.cross_entropy(logits[:, -1], batch.targets[:, -1]).backward()
    assert set(MODELS) == {"transformer", "boltzmann", "mean_field", "spin", "free_energy"}


def test_boltzmann_block_is_causal():
    """Changing a later token leaves earlier positions' logits unchanged (causal mask)."""
    config = TrainConfig(**{**TINY, "model": "boltzmann"})
    task = make_task(config)
    torch.manual_seed(0)
    model = build_model(config, task).eval()
    tokens = task.train_batch(0).inputs
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % task.vocab_size
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.equal(a[:, :-1], b[:, :-1]) and not torch.equal(a[:, -1], b[:, -1])


def test_digits_and_charlm_run(tmp_path, one_thread):
    pytest.importorskip("sklearn")
    digits = train(
        TrainConfig(**{**TINY, "task": "digits", "max_steps": 2}), tmp_path / "d", progress=False
    )
    assert set(digits.evaluation) >= {"val_loss", "val_accuracy", "test_accuracy"}
    text = tmp_path / "t.txt"
    text.write_text("abcdefgh" * 200)
    run = TrainConfig(
        **{**TINY, "task": "charlm", "data_path": str(text), "seq_len": 8, "max_steps": 2}
    )
    charlm = train(run, tmp_path / "c", progress=False)
    assert charlm.evaluation["val_bpc"] == pytest.approx(
        charlm.evaluation["val_loss"] / math.log(2)
    )
    record = json.loads((tmp_path / "c" / "run.json").read_text())
    assert record["data"]["split_sha256"] == make_task(run).split_sha256
    assert list((tmp_path / "c" / "data").glob("*.train.bin"))


def test_sizes_a_block_rejects_are_config_errors(tmp_path):
    from spinformer.train import ConfigError

    with pytest.raises(ConfigError, match=r"model 'spin' cannot be built.*head"):
        train(
            TrainConfig(**{**TINY, "model": "spin", "n_heads": 8}), tmp_path / "r", progress=False
        )
    with pytest.raises(ConfigError, match=r"model 'transformer' cannot be built"):
        train(TrainConfig(**{**TINY, "d_model": 15}), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()
