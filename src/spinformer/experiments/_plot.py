"""Figure helpers shared by experiments: one style, headless backend, no global state leaks."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

__all__ = ["new_figure"]


def new_figure(
    ncols: int = 1, nrows: int = 1, width: float = 4.2, height: float = 3.2
) -> tuple[Figure, Any]:
    """A figure with ``nrows x ncols`` axes, sized per panel, using a clean shared style."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
    fig.set_layout_engine("constrained")
    plt.close(fig)  # the caller owns it; keep pyplot's registry empty
    if nrows == ncols == 1:
        return fig, axes[0, 0]
    return fig, axes.ravel() if 1 in (nrows, ncols) else axes
