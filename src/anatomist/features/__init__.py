"""Sparse dictionaries on activations: SAEs and transcoders, their training, formats and fast kernels."""

from anatomist.features.archs import (
    BatchTopKConfig,
    BatchTopKSAE,
    JumpReLUConfig,
    JumpReLUSAE,
    ReLUConfig,
    ReLUSAE,
    SAEArchConfig,
    TiedReLUConfig,
    TiedReLUSAE,
    TopKConfig,
    TopKSAE,
)
from anatomist.features.base import SAE_CONFIGS, SAE_REGISTRY, SAEConfig, SparseDictionary, TrainOutput, make_sae
from anatomist.features.bases import BASES, LinearBasis, LinearConfig, fit_basis
from anatomist.features.formats import detect_format, load_sae, save_sae
from anatomist.features.train import DataConfig, TrainConfig, train_sae

__all__ = [
    "BASES",
    "LinearBasis",
    "LinearConfig",
    "fit_basis",
    "SAE_CONFIGS",
    "SAE_REGISTRY",
    "BatchTopKConfig",
    "BatchTopKSAE",
    "JumpReLUConfig",
    "JumpReLUSAE",
    "ReLUConfig",
    "ReLUSAE",
    "SAEArchConfig",
    "TiedReLUConfig",
    "TopKConfig",
    "SAEConfig",
    "SparseDictionary",
    "TiedReLUSAE",
    "TopKSAE",
    "TrainOutput",
    "DataConfig",
    "TrainConfig",
    "detect_format",
    "load_sae",
    "make_sae",
    "save_sae",
    "train_sae",
]
