"""Figures of a :class:`~spinformer.lens.analysis.LensResult` (headless matplotlib).

Layer × head heatmaps (asymmetry, S/ln N, β/β_c), the per-token entropy on the text, and seed
003's picture of a spin system: the tokens of one head as sites at random positions, with only
the strongest couplings J_ij = β ω_ij (symmetric part) drawn.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.figure import Figure

from spinformer.experiments._plot import new_figure
from spinformer.lens.analysis import LensResult

__all__ = ["lens_figures", "spin_system_figure"]


def _single(result: LensResult) -> None:
    if result.input_ids.ndim != 1:
        raise ValueError("figures are drawn for a single text, got a batch of texts")


def _heatmap(ax, values: np.ndarray, title: str, cmap: str, vmin=None, vmax=None) -> None:
    image = ax.imshow(values, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax, origin="lower")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title)
    ax.grid(False)
    ax.figure.colorbar(image, ax=ax, shrink=0.85)


def heatmaps_figure(result: LensResult) -> Figure:
    """Layer × head maps of the asymmetry, the mean S/ln N and β/β_c."""
    _single(result)
    panels = 3 if result.critical_beta is not None else 2
    fig, axes = new_figure(ncols=panels, width=4.4, height=3.6)
    _heatmap(axes[0], result.asymmetry.double().numpy(), "asymmetry ‖A‖/‖W_QK‖", "viridis", 0, 1)
    entropy = torch.nanmean(result.normalized_entropy, dim=-1).double().numpy()
    _heatmap(axes[1], entropy, "mean S / ln N (1 = uniform)", "magma", 0, 1)
    if result.beta_ratio is not None:
        ratio = result.beta_ratio.double().clamp_max(4.0).numpy()
        _heatmap(axes[2], ratio, "β / β_c (≥ 1: ordered)", "coolwarm", 0, 2)
    fig.suptitle(f"{result.name}: {result.num_layers} layers × {result.num_heads} heads")
    return fig


def entropy_figure(result: LensResult) -> Figure:
    """Per-token entropy on the text: the layer × token map of S/ln N averaged over heads."""
    _single(result)
    n = len(result.tokens)
    fig, ax = new_figure(width=max(6.0, min(0.22 * n, 18.0)), height=3.8)
    values = torch.nanmean(result.normalized_entropy, dim=1).double().numpy()  # (L, N)
    image = ax.imshow(values, aspect="auto", cmap="magma", vmin=0, vmax=1, origin="lower")
    ax.grid(False)
    ax.set_ylabel("layer")
    ax.set_title("attention entropy per token, S/ln N averaged over heads")
    if n <= 64:
        ax.set_xticks(range(n), [t.replace("Ġ", "·") for t in result.tokens], rotation=90)
        ax.tick_params(axis="x", labelsize=7)
    else:
        ax.set_xlabel("token position")
    fig.colorbar(image, ax=ax, shrink=0.85)
    return fig


def spin_system_figure(
    result: LensResult, layer: int, head: int, num_edges: int | None = None, seed: int = 0
) -> Figure:
    """Bal's (2021) picture: tokens as sites at random positions, the strongest couplings drawn.

    J_ij = ½β(ω_ij + ω_ji) from the recomputed scores (log-weights up to a per-row constant are
    not enough, so the scores are rebuilt from ln α + ln Z); edges of the ``num_edges`` largest
    |J_ij − mean J| (default 2N), blue above the mean coupling, red below, width ∝ the deviation.
    """
    _single(result)
    if not (0 <= layer < result.num_layers) or not (0 <= head < result.num_heads):
        raise ValueError(
            f"layer and head must lie in [0, {result.num_layers}) × [0, {result.num_heads}),"
            f" got ({layer}, {head})"
        )
    weights = result.attention[layer, head].double()
    log_z = result.log_partition[layer, head].double()
    allowed = weights > 0
    beta_omega = torch.where(allowed, weights.clamp_min(1e-300).log() + log_z[:, None], 0.0)
    both = allowed & allowed.T
    coupling = torch.where(both, 0.5 * (beta_omega + beta_omega.T), 0.0)
    if result.causal:  # only pairs seen in both directions exist; use the one that is
        coupling = torch.where(allowed & ~allowed.T, beta_omega, coupling)
        coupling = torch.where(~allowed & allowed.T, beta_omega.T, coupling)
    n = coupling.shape[0]
    coupling.fill_diagonal_(0.0)
    # centred on the mean over pairs: blue and red are above and below the typical coupling
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    centred = coupling - coupling[upper].mean() if n > 1 else coupling
    edges = num_edges if num_edges is not None else 2 * n
    rng = np.random.default_rng(seed)
    position = rng.uniform(size=(n, 2))
    fig, ax = new_figure(width=6.4, height=5.6)
    ax.grid(False)
    ax.set_xticks([])
    ax.set_yticks([])
    values = centred[upper]
    pairs = upper.nonzero()
    if values.numel():
        top = values.abs().topk(min(edges, values.numel())).indices
        scale = float(values.abs()[top].max()) or 1.0
        for index in top.tolist():
            i, j = pairs[index].tolist()
            value = float(values[index])
            ax.plot(
                position[[i, j], 0],
                position[[i, j], 1],
                color="tab:blue" if value > 0 else "tab:red",
                linewidth=0.4 + 3.0 * abs(value) / scale,
                alpha=0.35 + 0.5 * abs(value) / scale,
                zorder=1,
            )
    ax.scatter(position[:, 0], position[:, 1], s=28, color="black", zorder=2)
    for i, token in enumerate(result.tokens):
        ax.annotate(token.replace("Ġ", ""), position[i], fontsize=7, xytext=(3, 3),
                    textcoords="offset points")  # fmt: skip
    phase = "" if result.phase_labels is None else f", {result.phase_labels[layer][head]}"
    ax.set_title(
        f"layer {layer} head {head}: tokens as spins, strongest couplings βω"
        f" (β = {float(result.beta[layer, head]):.3g}{phase})"
    )
    return fig


def lens_figures(result: LensResult, head: tuple[int, int] | None = None) -> dict[str, Figure]:
    """All lens figures by file stem; ``head`` = (layer, head) for the spin-system picture
    (default: the head with the largest β/β_c, else the lowest mean entropy)."""
    if head is None:
        if result.beta_ratio is not None and bool(torch.isfinite(result.beta_ratio).any()):
            score = torch.nan_to_num(result.beta_ratio, nan=-math.inf)
        else:
            score = -torch.nanmean(result.normalized_entropy, dim=-1)
        flat = int(score.reshape(-1).argmax())
        head = (flat // result.num_heads, flat % result.num_heads)
    return {
        "lens_heatmaps": heatmaps_figure(result),
        "lens_entropy": entropy_figure(result),
        "lens_spin_system": spin_system_figure(result, *head),
    }
