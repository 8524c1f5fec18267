"""``spinformer train`` from the command line, alone and under torchrun (DDP, gloo on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from spinformer.cli import app
from spinformer.train import TrainConfig, train

TINY = (
    "d_model = 16\nn_heads = 2\nn_layers = 1\nbatch_size = 8\nmax_steps = 6\nwarmup_steps = 2\n"
    'log_every = 1\neval_every = 3\neval_batches = 1\ncheckpoint_every = 3\ndevice = "cpu"\n'
)
runner = CliRunner()


def _losses(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def test_cli_trains_resumes_and_names_bad_keys(tmp_path):
    preset = tmp_path / "tiny.toml"
    preset.write_text(TINY)
    out = tmp_path / "run"
    args = ["train", "--config", str(preset), "--out", str(out), "--no-progress"]
    result = runner.invoke(app, [*args, "--stop-at", "3"])
    assert result.exit_code == 0, result.output
    assert "parameters" in result.output
    result = runner.invoke(app, [*args, "--resume", "--set", "eval_every=2"])
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
    bad = runner.invoke(app, [*args, "--set", "learning_rate=0.1"])
    assert bad.exit_code == 2 and "did you mean" in bad.output
    other = runner.invoke(app, [*args, "--set", "seed=5"])
    assert other.exit_code == 2 and "seed: 0 -> 5" in " ".join(other.output.split())
    missing = runner.invoke(app, ["train", "--config", str(tmp_path / "no.toml"), "--out", "x"])
    assert missing.exit_code == 2 and "does not exist" in missing.output


@pytest.mark.slow  # two interpreter start-ups + gloo rendezvous: 15-45 s on two busy cores
def test_torchrun_two_ranks_match_one_process(tmp_path):
    """2 gloo ranks with 4 rows each vs 1 process with the 8-row global batch: same losses up to
    float reduction order (tolerance 1e-5 relative over 6 steps)."""
    bindir = Path(sys.executable).parent
    torchrun, script = bindir / "torchrun", bindir / "spinformer"
    if not (torchrun.exists() and script.exists()):
        pytest.skip("torchrun or the spinformer script is not installed next to the interpreter")
    preset = tmp_path / "tiny.toml"
    preset.write_text(TINY)
    config = TrainConfig(
        d_model=16,
        n_heads=2,
        n_layers=1,
        batch_size=8,
        max_steps=6,
        warmup_steps=2,
        log_every=1,
        eval_every=3,
        eval_batches=1,
        checkpoint_every=3,
        device="cpu",
    )
    single = train(config, tmp_path / "single", progress=False)
    src = Path(__file__).resolve().parents[1] / "src"
    env = {
        **os.environ,
        "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    command = [
        str(torchrun),
        "--standalone",
        "--nproc_per_node=2",
        "--no-python",
        str(script),
        "train",
        "--config",
        str(preset),
        "--out",
        str(tmp_path / "ddp"),
        "--no-progress",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 process(es)" in done.stdout + done.stderr
    ddp = _losses(tmp_path / "ddp")
    worst = max(abs(a - b) / abs(b) for a, b in zip(ddp, single.losses, strict=True))
    print(f"DDP vs single process: max relative loss difference {worst:.2e} over 6 steps")
    assert ddp == pytest.approx(single.losses, rel=1e-5)
    checkpoints = sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").glob("*.json"))
    assert checkpoints == ["step-00000003.json", "step-00000006.json"]  # rank 0 wrote once
