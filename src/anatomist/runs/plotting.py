"""matplotlib for run kinds: imported lazily (it is heavy and only kinds that draw need it), headless."""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
