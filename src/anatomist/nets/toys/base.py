"""The interface every toy config implements: build the net, sample its data, state its ground truth.

A toy is fully described by its config: architecture, data distribution and training recipe.
That is what makes a trained toy cacheable by the hash of its config.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from anatomist.core.config import Config
from anatomist.nets.toys.ground_truth import GroundTruth


class ToyConfig(Config):
    """Fields shared by every toy: its registry name, seed and training recipe (AdamW).

    Subclasses re-declare the recipe fields with their toy's published values as defaults.
    """

    kind: str = Field(description="Toy family ('tms', 'resid_mlp'); selects the config class when loading.")
    name: str = Field(description="Registry name of the toy; names the cache folder and run outputs.")
    seed: int = Field(
        default=0, description="Seeds the initialisation, any fixed random weights and the training data."
    )
    steps: int = Field(description="Number of optimizer steps.", gt=0)
    batch_size: int = Field(description="Samples per training step.", gt=0)
    lr: float = Field(description="Peak AdamW learning rate.", gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        description="'constant', or 'cosine': half-period cosine from lr at step 0 to 0 at the last step."
    )
    weight_decay: float = Field(default=0.01, description="AdamW weight decay (0.01 is PyTorch's AdamW default).", ge=0)

    # Most intra-op threads worth using when training on CPU (None: PyTorch's default). Tiny nets
    # gain nothing from a second thread, and on a busy machine OpenMP barriers make them slower.
    max_cpu_threads: ClassVar[int | None] = None

    def lr_at(self, step: int) -> float:
        if self.lr_schedule == "constant":
            return self.lr
        return self.lr * 0.5 * (1 + math.cos(math.pi * step / max(self.steps - 1, 1)))

    @abstractmethod
    def build(self) -> nn.Module:
        """A freshly initialised model (deterministic given `seed`), on CPU."""

    @abstractmethod
    def sample_batch(
        self, batch_size: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> tuple[Tensor, Tensor]:
        """`(inputs, labels)` drawn from the toy's data distribution."""

    @abstractmethod
    def ground_truth(self, model: nn.Module) -> GroundTruth:
        """The true mechanisms of a (trained) model of this toy."""

    def held_out(self, model: nn.Module) -> dict[str, float]:
        """Numbers on data the toy never trains on (a classifier's test accuracy); none for sampled toys."""
        return {}

    def loss(self, output: Tensor, labels: Tensor) -> Tensor:
        """Training loss: squared error averaged over batch and features (both toys' published loss)."""
        return (output - labels).pow(2).mean()


def sparse_uniform(
    batch_size: int,
    n_features: int,
    p: float,
    low: float,
    high: float,
    generator: torch.Generator | None,
    device: str | torch.device,
) -> Tensor:
    """Each feature independently active with probability p, its value then U[low, high], else 0."""
    # draw where the generator lives (a CUDA generator draws on the GPU), then move
    where = generator.device if generator is not None else torch.device(device)
    active = torch.rand(batch_size, n_features, generator=generator, device=where) < p
    values = torch.rand(batch_size, n_features, generator=generator, device=where) * (high - low) + low
    return (values * active).to(device)
