"""Sparse dictionaries on activations: SAEs and transcoders, their training, formats and fast kernels."""

from anatomist.features.archs import BatchTopKSAE, JumpReLUSAE, ReLUSAE, TiedReLUSAE, TopKSAE
from anatomist.features.base import SAE_REGISTRY, SAEConfig, SparseDictionary, TrainOutput, make_sae

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
    "make_sae",
]
