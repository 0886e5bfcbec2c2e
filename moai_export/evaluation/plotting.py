"""Figure helpers every PNG writer shares (benchmark reports, training curves): matplotlib
with the Agg backend (no display needed), a grid of panels, and saving that frees the figure."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as pyplot  # noqa: E402  (after choosing the backend)


def panel_grid(n: int, ncols: int):
    """A figure of `n` panels, at most `ncols` per row; returns (figure, axes in reading order).
    Cells past `n` in the last row are hidden."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = pyplot.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def save_figure(fig, path: Path) -> Path:
    """Lay out, write the PNG and close the figure (a long run writes many)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot.close(fig)
    return path
