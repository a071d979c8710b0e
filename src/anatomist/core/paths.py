"""Where anatomist keeps its caches (trained toys, harvested activations)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """$ANATOMIST_CACHE or ~/.cache/anatomist, with sub-folders created on demand."""
    root = Path(os.environ.get("ANATOMIST_CACHE", Path.home() / ".cache" / "anatomist"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
