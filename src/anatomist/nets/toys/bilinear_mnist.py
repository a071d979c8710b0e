"""A bilinear MLP classifier for MNIST digits (the layers: `anatomist.nets.bilinear`).

The toy `bilinear-mnist` (`BilinearMNISTConfig`) is a BilinearMLP on the 5,000 packaged MNIST
digits; it has no planted ground truth, its mechanisms are what the bilinear lens reads off it.
"""

from __future__ import annotations

from functools import cache
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from anatomist.core.errors import AnatomistError
from anatomist.core.packages import mnist_5k
from anatomist.nets.bilinear import BilinearMLP
from anatomist.nets.toys.base import ToyConfig
from anatomist.nets.toys.ground_truth import GroundTruth

# --- the MNIST toy -------------------------------------------------------------------------------

_SPLIT_SEED = 0  # the held-out split is the same for every training seed


@cache
def _split(test_per_class: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Stratified split of the 5,000 packaged digits: (train x, train y, test x, test y), x flat [N, 784]."""
    images, labels = mnist_5k()  # the digits of load_images("mnist")
    x, y = torch.from_numpy(images.copy()).flatten(1), torch.from_numpy(labels.copy())
    g = torch.Generator().manual_seed(_SPLIT_SEED)
    train, test = [], []
    for c in range(10):
        idx = (y == c).nonzero().squeeze(1)
        if len(idx) <= test_per_class:
            raise AnatomistError(f"class {c} has {len(idx)} images; cannot hold out {test_per_class}")
        idx = idx[torch.randperm(len(idx), generator=g)]
        test.append(idx[:test_per_class])
        train.append(idx[test_per_class:])
    tr, te = torch.cat(train), torch.cat(test)
    return x[tr], y[tr], x[te], y[te]


class BilinearMNISTConfig(ToyConfig):
    """A bilinear MLP classifying the 5,000 packaged MNIST digits, trained with Gaussian input noise.

    Recipe after Pearce et al. (2024): one bilinear layer (no embedding here: the layer reads pixels,
    so its eigenvectors are images), a linear head, dense input noise σ = 0.33, AdamW with weight
    decay 0.5, lr 1e-3. Training sees 4,000 digits (400 per class); 1,000 (100 per class) are held out.
    """

    kind: Literal["bilinear_mnist"] = Field(
        default="bilinear_mnist", description="Toy family; selects the config class when loading."
    )
    name: str = Field(default="bilinear-mnist", description="Registry name of the toy; names the cache folder.")
    d_hidden: int = Field(default=300, description="Width of the bilinear layer (published: 300).", gt=0)
    input_noise: float = Field(default=0.33, description="σ of the Gaussian noise added to training pixels.", ge=0)
    test_per_class: int = Field(default=100, description="Held-out digits per class (of 500).", gt=0, lt=500)
    steps: int = Field(default=1000, description="Optimizer steps (1000 × 100 ≈ 25 epochs of 4,000).", gt=0)
    batch_size: int = Field(default=100, description="Digits per step (published: 100).", gt=0)
    lr: float = Field(default=1e-3, description="Peak AdamW learning rate (published: 1e-3).", gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field(default="cosine", description="Learning-rate schedule.")
    weight_decay: float = Field(default=0.5, description="AdamW weight decay (published: 0.5).", ge=0)
    max_cpu_threads: ClassVar[int | None] = 1  # [100, 784] @ [784, 600] steps: a second thread buys little

    def build(self) -> BilinearMLP:
        torch.manual_seed(self.seed)  # nn.Linear's own initialisation, made reproducible
        return BilinearMLP(784, self.d_hidden, 10)

    def sample_batch(
        self, batch_size: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> tuple[Tensor, Tensor]:
        """Training digits drawn with replacement, plus Gaussian pixel noise; labels are class indices."""
        x, y, _, _ = _split(self.test_per_class)
        where = generator.device if generator is not None else torch.device("cpu")
        idx = torch.randint(len(y), (batch_size,), generator=generator, device=where).cpu()
        noise = torch.randn(batch_size, x.shape[1], generator=generator, device=where).cpu()
        return (x[idx] + self.input_noise * noise).to(device), y[idx].to(device)

    def test_set(self) -> tuple[Tensor, Tensor]:
        """The held-out digits (flat [N, 784], no noise) and their labels."""
        _, _, x, y = _split(self.test_per_class)
        return x, y

    def loss(self, output: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(output, labels)

    def ground_truth(self, model: nn.Module) -> GroundTruth:
        raise AnatomistError(
            f"{self.name} has no planted ground truth; read its mechanisms from the weights with "
            "anatomist.mechanisms.bilinear (e.g. `anatomist bilinear mnist`)"
        )
