"""Sparse dictionaries on activations: SAEs and transcoders, their training, formats and fast kernels."""

from anatomist.features.archs import BatchTopKSAE, JumpReLUSAE, ReLUSAE, TiedReLUSAE, TopKSAE
from anatomist.features.base import SAE_REGISTRY, SAEConfig, SparseDictionary, TrainOutput, make_sae
from anatomist.features.formats import detect_format, load_sae, save_sae
from anatomist.features.train import DataConfig, TrainConfig, train_sae

__all__ = [
    "SAE_REGISTRY",
    "BatchTopKSAE",
    "JumpReLUSAE",
    "ReLUSAE",
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
