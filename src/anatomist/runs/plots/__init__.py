"""Plots of run results, one module per family of kinds.

matplotlib is heavy and only drawing needs it, so it is imported on the first `pyplot()` call rather than
when these modules load; runners import the plot functions at the top like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot with a file-only backend (never a window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: float | None = None) -> None:
    """Lay the figure out, write it (at `dpi`, else matplotlib's default) and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
