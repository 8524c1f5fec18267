r"""Training spin-model transformers against a matched vanilla transformer, and footnote 9.

Bal, "Spin-model transformers" (2023): a transformer block is the mean-field response of a
vector-spin system probed by its tokens, and a deep transformer is a stack of such systems whose
magnetizations drive the next. These experiments ask whether such blocks *train* as well as the
vanilla block, at matched parameter counts, steps, data and optimiser.

* ``training_run`` -- one training run (a task, a model, a seed) by :func:`spinformer.train.train`:
  validation metric (accuracy, or bits per character for the language model), tokens per second,
  peak memory, mean-field iterations per block and the loss curve.
* ``training_comparison`` -- every model on every task over seeds, as a sweep
  (:func:`spinformer.sweep.sweep`): mean ± spread per model and task, parameter counts, loss
  curves. The spin block in its first design (dot-product couplings, LayerNorm, m(0) = 0,
  out = x + W_O m) with K = 1, 2 steps, the fixed point and the second-order (dynamical TAP)
  step; and the best design measured (cosine couplings with a learnable temperature, per-head
  RMSNorm on the spin radius, a learned initial magnetization, the stream carried as
  magnetizations, rotary positions for sequence tasks). The published recipe of Bal's ``neqnn``
  package is measured in the same run when its path is given (``SPINFORMER_PEER_PATH``), and
  skipped with a message otherwise; nothing of it is part of spinformer.
* ``training_footnote9`` -- does the feed-forward network learn the Onsager correction (Bal 2021,
  footnote 9)? A naive mean-field block with an FFN field and a second-order block without one
  are trained; on held-out data the change the trained FFN makes to the magnetization is compared
  with the reaction (Onsager) term the second-order step would add at the same state
  (:func:`alignment`: R² of a linear fit and cosine).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from spinformer.experiments._plot import new_figure
from spinformer.experiments._registry import (
    POSITIVE,
    ConfigError,
    ExperimentResult,
    register_experiment,
)

__all__ = [
    "MODEL_VARIANTS",
    "PEER_ENV",
    "SECTION",
    "TASK_SETTINGS",
    "alignment",
    "training_comparison",
    "training_footnote9",
    "training_run",
]

SECTION = "Training spin-model transformers"
PEER_ENV = "SPINFORMER_PEER_PATH"
"""Environment variable naming a checkout of Bal's ``neqnn`` package (measured when set)."""

#: The CPU task settings (those of ``configs/train/<task>.toml``), as training-config overrides.
TASK_SETTINGS: dict[str, dict[str, Any]] = {
    "recall": {"task": "recall", "num_pairs": 4, "num_keys": 8, "num_values": 8, "d_model": 32,
               "n_heads": 2, "batch_size": 32, "lr": 3e-3, "eval_batches": 16},
    "digits": {"task": "digits", "patch": 1, "d_model": 32, "n_heads": 2, "batch_size": 32,
               "lr": 3e-3, "eval_batches": 8},
    "charlm": {"task": "charlm", "seq_len": 64, "d_model": 64, "n_heads": 4, "batch_size": 32,
               "lr": 3e-3, "eval_batches": 8},
}  # fmt: skip

_FIRST_DESIGN = {"coupling": "dot", "norm": "layer", "start": "zero", "residual": "add"}
_BEST_DESIGN = {
    "coupling": "cosine",
    "norm": "rms",
    "start": "learned",
    "residual": "magnetization",
}

#: model name -> training-config overrides (``peer`` is built from the peer package instead).
MODEL_VARIANTS: dict[str, dict[str, Any]] = {
    "transformer": {"model": "transformer"},
    "boltzmann": {"model": "boltzmann"},
    "mean_field": {"model": "mean_field", "steps": 2},
    "free_energy": {"model": "free_energy"},
    "spin_k1": {"model": "spin", "steps": 1, **_FIRST_DESIGN},
    "spin_k2": {"model": "spin", "steps": 2, **_FIRST_DESIGN},
    "spin_fixed_point": {"model": "spin", "steps": 0, **_FIRST_DESIGN},
    "spin_tap": {"model": "spin", "steps": 2, "order": 2, **_FIRST_DESIGN},
    "spin_best": {"model": "spin", "steps": 1, **_BEST_DESIGN},
    "spin_best_k2": {"model": "spin", "steps": 2, **_BEST_DESIGN},
    "spin_best_fixed_point": {"model": "spin", "steps": 0, **_BEST_DESIGN},
    "spin_best_tap": {"model": "spin", "steps": 2, "order": 2, **_BEST_DESIGN},
    "peer": {"model": "transformer"},  # config of the loop only; the model is the peer's
}
MODEL_LABELS = {
    "transformer": "vanilla transformer",
    "boltzmann": "Boltzmann attention",
    "mean_field": "mean-field attention (TAP, K=2)",
    "free_energy": "free-energy attention",
    "spin_k1": "spin block, first design, K=1",
    "spin_k2": "spin block, first design, K=2",
    "spin_fixed_point": "spin block, first design, fixed point",
    "spin_tap": "spin block, first design, TAP (order 2), K=2",
    "spin_best": "spin block, best design, K=1",
    "spin_best_k2": "spin block, best design, K=2",
    "spin_best_fixed_point": "spin block, best design, fixed point (no W_V, W_O: ~0.9× params)",
    "spin_best_tap": "spin block, best design, TAP (order 2), K=2",
    "peer": "peer recipe (neqnn, Bal)",
}


def _best_position(task: str) -> str:
    # relative positions for sequences; pixel identity needs absolute positions
    return "absolute" if task == "digits" else "rotary"


def _train_config(task: str, model: str, seed: int, max_steps: int, overrides: Mapping[str, Any]):
    from spinformer.train import TrainConfig

    values: dict[str, Any] = {**TASK_SETTINGS[task], **MODEL_VARIANTS[model]}
    if model.startswith("spin_best"):
        values["position"] = _best_position(task)
    values.update(
        seed=seed,
        max_steps=max_steps,
        warmup_steps=max(1, max_steps // 10),
        log_every=max(1, max_steps // 25),
        eval_every=0,
        checkpoint_every=0,
        keep_last=1,
        device="cpu",
        **overrides,
    )
    return TrainConfig(**values)


def _peer_factory():
    """A model factory for the ``neqnn`` recipe (K = 1, learned start, rotary positions, stream
    as magnetizations, embeddings on the spin radius), or ``None`` when it is not importable."""
    path = os.environ.get(PEER_ENV)
    if not path:
        return None
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        neqnn = importlib.import_module("neqnn")
    except ImportError:
        return None
    module = neqnn.SpinModelTransformerModule

    class PeerStack(nn.Module):
        def __init__(self, vocab: int, dim: int, depth: int, heads: int, causal: bool, out: int,
                     classify: bool) -> None:  # fmt: skip
            super().__init__()
            self.classify = classify
            self.embedding = nn.Embedding(vocab, dim)
            self.layers = nn.ModuleList(
                module(
                    dim=dim,
                    num_heads=heads,
                    num_steps=1,
                    init="learned",
                    input_mode="field" if i == 0 else "magnetization",
                    beta=1.0,
                    causal=causal,
                    rope=True,
                )
                for i in range(depth)
            )
            self.readout = nn.Sequential(nn.RMSNorm(dim), nn.Linear(dim, out, bias=False))
            with torch.no_grad():
                heads_view = self.embedding.weight.view(vocab, heads, dim // heads)
                radius = self.layers[0].radius_head
                heads_view.copy_(radius * nn.functional.normalize(heads_view, dim=-1))

        def forward(self, tokens: Tensor, padding_mask: Tensor | None = None) -> Tensor:
            x = self.embedding(tokens)
            for layer in self.layers:
                x = layer(x, mask=padding_mask).magnetizations
            return self.readout(x.mean(1) if self.classify else x)

    def build(config, task) -> nn.Module:
        classify = task.head == "classify"
        out = task.num_classes if classify else task.vocab_size
        return PeerStack(task.vocab_size, config.d_model, config.n_layers, config.n_heads,
                         not classify, out, classify)  # fmt: skip

    return build


def _activation_mib(model: nn.Module, batch: Any) -> float:
    """MiB of the tensors one training step saves for backward and uses there (distinct
    storages): the activation memory of a batch, independent of the allocator and of other
    processes. Counted when backward unpacks them, so a branch of the graph that the forward
    builds and drops (e.g. an overflow check) is not counted and no freed address is reused."""
    from spinformer.train.loop import task_loss

    seen: dict[int, int] = {}

    def unpack(t: Tensor) -> Tensor:
        if t.device.type != "meta":
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, unpack):
        loss = task_loss(model(batch.inputs), batch.targets)
    loss.backward()  # outside: what backward itself saves (an implicit adjoint) is not counted
    model.zero_grad(set_to_none=True)
    return sum(seen.values()) / 2**20


@register_experiment(
    "training_run",
    "One training run: a task, a model, a seed",
    limits={"max_steps": POSITIVE},
)
def training_run(
    task: str = "recall",
    model: str = "spin_best",
    seed: int = 0,
    max_steps: int = 500,
    n_layers: int = 2,
) -> ExperimentResult:
    """Train ``model`` on ``task`` for ``max_steps`` AdamW steps and measure it.

    Metrics: ``parameters``; ``val_metric`` (accuracy, or bits per character for ``charlm``) and
    the test one; ``tokens_per_s`` (training tokens over the run's wall time, one final
    evaluation included); ``activation_mib`` (memory of
    the tensors one training step saves for backward); ``iterations``
    (mean-field iterations per block on a validation batch; 0 where the block has none);
    ``curve`` (the logged training losses as a JSON list of [step, loss]). ``model="peer"``
    needs ``SPINFORMER_PEER_PATH``; without it the run is ``skipped``.
    """
    if task not in TASK_SETTINGS:
        raise ConfigError("task", f"task must be one of {sorted(TASK_SETTINGS)}, got {task!r}")
    if model not in MODEL_VARIANTS:
        raise ConfigError("model", f"model must be one of {sorted(MODEL_VARIANTS)}, got {model!r}")
    from spinformer.train import make_task, train

    config = _train_config(task, model, seed, max_steps, {"n_layers": n_layers})
    factory = None
    if model == "peer":
        factory = _peer_factory()
        if factory is None:
            message = f"skipped: set {PEER_ENV} to a checkout of the neqnn package to measure it"
            return ExperimentResult("training_run", _config(locals()), {"status": message})
    built: list[nn.Module] = []

    def build(cfg, task_):
        from spinformer.train import build_model

        made = (factory or build_model)(cfg, task_)
        built.append(made)
        return made

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            result = train(config, out, progress=False, model_factory=build)
            seconds = time.perf_counter() - started
            with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as handle:
                rows = [json.loads(line) for line in handle if line.strip()]
        probe = make_task(config).eval_set("val")[0]
        iterations = _iterations(built[0], probe.inputs)
        activations = _activation_mib(built[0], make_task(config).train_batch(0))
    finally:
        torch.set_num_threads(threads)
    sample = probe.inputs.shape[1]
    key = "bpc" if task == "charlm" else "accuracy"
    metrics: dict[str, Any] = {
        "parameters": result.parameters,
        "val_metric": result.evaluation[f"val_{key}"],
        "test_metric": result.evaluation[f"test_{key}"],
        "metric_name": "bits/char" if key == "bpc" else "accuracy",
        "tokens_per_s": max_steps * config.batch_size * sample / seconds,
        "activation_mib": activations,
        "iterations": iterations,
        "status": result.status,
        "curve": json.dumps([[r["step"], r["loss"]] for r in rows if "loss" in r]),
    }
    return ExperimentResult("training_run", _config(locals()), metrics)


def _config(scope: Mapping[str, Any]) -> dict[str, Any]:
    return {k: scope[k] for k in ("task", "model", "seed", "max_steps", "n_layers")}


@torch.no_grad()
def _iterations(model: nn.Module, tokens: Tensor) -> float:
    """Mean-field iterations per block (mean over blocks and spin systems) on ``tokens``."""
    try:
        _, states = model(tokens, return_state=True)
    except TypeError:  # a model without states (the peer's)
        return 0.0
    counts = [float(s.iterations.float().mean()) for s in states if s.iterations is not None]
    return statistics.fmean(counts) if counts else 0.0


def _mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


@register_experiment(
    "training_comparison",
    "Spin-model blocks against a matched vanilla transformer, over seeds",
    section=SECTION,
    order=80,
    report_config={
        "tasks": ("recall",),
        "models": ("transformer", "spin_k2", "spin_best"),
        "seeds": 1,
        "max_steps": 60,
    },
    limits={"seeds": POSITIVE, "max_steps": POSITIVE, "workers": POSITIVE},
)
def training_comparison(
    tasks: tuple[str, ...] = ("recall", "digits", "charlm"),
    models: tuple[str, ...] = (
        "transformer",
        "boltzmann",
        "mean_field",
        "spin_k1",
        "spin_k2",
        "spin_fixed_point",
        "spin_tap",
        "spin_best",
        "spin_best_k2",
        "spin_best_fixed_point",
        "spin_best_tap",
        "peer",
    ),
    seeds: int = 3,
    max_steps: int = 500,
    workers: int = 1,
) -> ExperimentResult:
    """Every model on every task for seeds 0..seeds−1, as one sweep of ``training_run``.

    The table gives per model and task the parameter count (and its ratio to the vanilla
    transformer), the validation metric as mean ± standard deviation over seeds, tokens per
    second, activation memory and mean-field iterations per block; the figure shows the training-loss
    curves (seed mean). Every model trains with the same data order, optimiser (AdamW, warm-up
    and cosine decay) and number of steps.
    """
    for name in tasks:
        if name not in TASK_SETTINGS:
            raise ConfigError("tasks", f"tasks must be in {sorted(TASK_SETTINGS)}, got {name!r}")
    for name in models:
        if name not in MODEL_VARIANTS:
            raise ConfigError("models", f"models must be in {sorted(MODEL_VARIANTS)}, got {name!r}")
    from spinformer.sweep import sweep

    config = {"tasks": tasks, "models": models, "seeds": seeds, "max_steps": max_steps,
              "workers": workers}  # fmt: skip
    table = sweep(
        "training_run",
        {"task": list(tasks), "model": list(models)},
        seeds=seeds,
        fixed={"max_steps": max_steps},
        executor="local",
        workers=workers,
    )
    failed = [r for r in table.rows if r.get("status") != "ok"]
    if failed:
        raise RuntimeError(f"{len(failed)} training run(s) failed: {failed[0]['error']}")
    return _comparison_result(config, table.rows, tasks, models)


def _comparison_result(config, rows, tasks, models) -> ExperimentResult:
    summary: list[dict[str, Any]] = []
    notes: list[str] = []
    metrics: dict[str, Any] = {}
    curves: dict[tuple[str, str], list[list[list[float]]]] = {}
    for task in tasks:
        base = [r for r in rows if r["task"] == task and r["model"] == "transformer"]
        base_params = base[0]["parameters"] if base else None
        for model in models:
            runs = [r for r in rows if r["task"] == task and r["model"] == model]
            done = [r for r in runs if isinstance(r.get("val_metric"), int | float)]
            if not done:
                skipped = next((r.get("metric:status") or r.get("status") for r in runs), "")
                notes.append(f"{task} / {MODEL_LABELS[model]}: {skipped}")
                continue
            mean, spread = _mean_spread([r["val_metric"] for r in done])
            params = done[0]["parameters"]
            row = {
                "task": task,
                "model": MODEL_LABELS[model],
                "parameters": params,
                "vs vanilla": params / base_params if base_params else math.nan,
                "metric": done[0]["metric_name"],
                "validation": f"{mean:.3f} ± {spread:.3f}",
                "seeds": len(done),
                "tokens/s": statistics.fmean(r["tokens_per_s"] for r in done),
                "activation MiB": statistics.fmean(r["activation_mib"] for r in done),
                "iterations": statistics.fmean(r["iterations"] for r in done),
            }
            summary.append(row)
            metrics[f"{task}/{model}/val_mean"] = mean
            metrics[f"{task}/{model}/val_spread"] = spread
            metrics[f"{task}/{model}/parameters"] = params
            metrics[f"{task}/{model}/tokens_per_s"] = row["tokens/s"]
            curves[(task, model)] = [json.loads(r["curve"]) for r in done]
    figure = _curves_figure(curves, tasks, models)
    return ExperimentResult(
        "training_comparison",
        dict(config),
        metrics,
        tables={"comparison": summary},
        figures={"loss_curves": figure} if figure is not None else {},
        notes=notes,
    )


def _curves_figure(curves, tasks, models):
    if not curves:
        return None
    fig, axes = new_figure(ncols=len(tasks), width=4.4, height=3.4)
    axes = [axes] if len(tasks) == 1 else list(axes)
    for ax, task in zip(axes, tasks, strict=True):
        for model in models:
            runs = curves.get((task, model))
            if not runs:
                continue
            steps = [point[0] for point in runs[0]]
            mean = [statistics.fmean(run[i][1] for run in runs) for i in range(len(steps))]
            ax.plot(steps, mean, label=MODEL_LABELS[model], lw=1.2)
        ax.set_title(task)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (nats)")
        ax.set_yscale("log")
    axes[-1].legend(fontsize=6, loc="upper right")
    return fig


def alignment(contribution: Tensor, reaction: Tensor) -> tuple[float, float]:
    """(R², cosine) of ``contribution`` against ``reaction``, over all their entries.

    R² is the fraction of the variance of the reaction term explained by a linear fit
    a + b·contribution (the squared Pearson correlation); the cosine is ⟨c, r⟩/(|c||r|).
    """
    if contribution.shape != reaction.shape:
        raise ValueError(
            f"contribution and reaction must have one shape, got {tuple(contribution.shape)} and"
            f" {tuple(reaction.shape)}"
        )
    c = contribution.detach().double().flatten()
    r = reaction.detach().double().flatten()
    cosine = float(c @ r / (c.norm() * r.norm()).clamp_min(1e-300))
    cc, rc = c - c.mean(), r - r.mean()
    correlation = float(cc @ rc / (cc.norm() * rc.norm()).clamp_min(1e-300))
    return correlation**2, cosine


@torch.no_grad()
def _ffn_and_reaction(model: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Per spin block of a trained naive (order 1) stack with an FFN field, on ``tokens``: the
    change the FFN field makes to the magnetization, φ(h + f + Jm) − φ(h + Jm), and the reaction
    term the second-order step would add at the same state, step₂(m) − step₁(m) with the field
    h without the FFN (m the magnetization the last step starts from). Both (all blocks, flat)."""
    from spinformer.nn._spin import split_heads
    from spinformer.physics.dynamical import vector_step

    inputs: list[Tensor] = []
    hooks = [b.register_forward_pre_hook(lambda _, a: inputs.append(a[0])) for b in model.blocks]
    try:
        model(tokens)
    finally:
        for hook in hooks:
            hook.remove()
    ffn_parts, reaction_parts = [], []
    for block, x in zip(model.blocks, inputs, strict=True):
        x_norm = block.norm(x)
        beta = block.beta()
        b = beta[:, None, None]
        field = split_heads(block.field(x_norm), block.n_heads)
        carrier = block.carrier(x, beta)
        if carrier is not None:
            field = field + carrier
        ffn = split_heads(block.ffn(x_norm), block.n_heads)
        couplings = block.couplings(x_norm)
        m = (
            torch.zeros_like(field)
            if block.value is None
            else vector_step(torch.zeros_like(field), couplings,
                             split_heads(block.value(x_norm), block.n_heads), b, block.radius, 1)
        )  # fmt: skip
        for _ in range((block.steps or 1) - 1):
            m = vector_step(m, couplings, field + ffn, b, block.radius, 1)
        with_ffn = vector_step(m, couplings, field + ffn, b, block.radius, 1)
        without = vector_step(m, couplings, field, b, block.radius, 1)
        second = vector_step(m, couplings, field, b, block.radius, 2)
        ffn_parts.append((with_ffn - without).flatten())
        reaction_parts.append((second - without).flatten())
    return torch.cat(ffn_parts), torch.cat(reaction_parts)


@register_experiment(
    "training_footnote9",
    "Footnote 9: does the feed-forward network learn the Onsager correction?",
    section=SECTION,
    order=81,
    report_config={"task": "recall", "seeds": 1, "max_steps": 60},
    limits={"seeds": POSITIVE, "max_steps": POSITIVE},
)
def training_footnote9(
    task: str = "recall", seeds: int = 3, max_steps: int = 500
) -> ExperimentResult:
    """Naive mean field + FFN field against explicit second order (TAP) without an FFN.

    Both are spin blocks of the best design with K = 2 steps (so the reaction term acts on a
    magnetization that already saw the couplings). On held-out data, per seed: R² and cosine
    between the change the trained FFN makes to the magnetization and the reaction term the
    second-order step would add at the same state (:func:`alignment`), and both validation
    metrics. R² near 1 would mean the FFN learned the Onsager correction (Bal 2021, fn. 9).
    """
    if task not in TASK_SETTINGS:
        raise ConfigError("task", f"task must be one of {sorted(TASK_SETTINGS)}, got {task!r}")
    from spinformer.train import make_task, train

    rows: list[dict[str, Any]] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for seed in range(seeds):
            row: dict[str, Any] = {"seed": seed}
            for label, extra in (
                ("naive + FFN", {}),
                ("TAP, no FFN", {"order": 2, "ffn_field": False}),
            ):
                overrides = {"steps": 2, "position": _best_position(task), **extra}
                config = _train_config(task, "spin_best", seed, max_steps, overrides)
                built: list[nn.Module] = []

                def build(cfg, task_, built=built):
                    from spinformer.train import build_model

                    built.append(build_model(cfg, task_))
                    return built[-1]

                with tempfile.TemporaryDirectory() as out:
                    result = train(config, out, progress=False, model_factory=build)
                key = "bpc" if task == "charlm" else "accuracy"
                row[f"{label} val {key}"] = result.evaluation[f"val_{key}"]
                row[f"{label} parameters"] = result.parameters
                if label == "naive + FFN":
                    probe = make_task(config).eval_set("val")[0].inputs
                    r2, cosine = alignment(*_ffn_and_reaction(built[0].eval(), probe))
                    row["R2"], row["cosine"] = r2, cosine
            rows.append(row)
    finally:
        torch.set_num_threads(threads)
    metrics: dict[str, Any] = {}
    for column in [c for c in rows[0] if c != "seed"]:
        mean, spread = _mean_spread([float(r[column]) for r in rows])
        metrics[f"{column} mean"], metrics[f"{column} spread"] = mean, spread
    return ExperimentResult(
        "training_footnote9",
        {"task": task, "seeds": seeds, "max_steps": max_steps},
        metrics,
        tables={"per seed": rows},
    )
