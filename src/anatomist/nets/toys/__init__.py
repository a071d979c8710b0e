"""Toy models with known ground truth: TMS (superposition) and residual MLPs (compressed computation).

>>> from anatomist.nets.toys import load_toy
>>> toy = load_toy("tms-5-2")               # trained once, then loaded from the cache
>>> x, y = toy.sample_batch(1024)
>>> toy.ground_truth.components["linear1"]  # [5, 2, 5]: feature i's rank-one piece of W
"""

from anatomist.nets.toys.base import ToyConfig
from anatomist.nets.toys.ground_truth import GroundTruth
from anatomist.nets.toys.registry import TOYS, load_toy_config, parse_toy_config, toy_config
from anatomist.nets.toys.resid_mlp import ResidMLP, ResidMLPConfig, monosemantic_loss, naive_loss
from anatomist.nets.toys.tms import TMS, TiedLinear, TMSConfig
from anatomist.nets.toys.train import TrainedToy, baselines, config_hash, evaluate_loss, load_toy, train_toy

__all__ = [
    "TMS",
    "TOYS",
    "GroundTruth",
    "ResidMLP",
    "ResidMLPConfig",
    "TMSConfig",
    "TiedLinear",
    "ToyConfig",
    "TrainedToy",
    "baselines",
    "config_hash",
    "evaluate_loss",
    "load_toy",
    "load_toy_config",
    "monosemantic_loss",
    "naive_loss",
    "parse_toy_config",
    "toy_config",
    "train_toy",
]
