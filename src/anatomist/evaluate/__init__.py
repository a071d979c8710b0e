"""Metrics shared by every lens: faithfulness (MSE, FVU, CE increase, KL, loss recovered) and sparsity."""

from anatomist.evaluate.dictionary import evaluate_dictionary
from anatomist.evaluate.metrics import (
    ReconstructionStats,
    cosine,
    dead_fraction,
    dense_fraction,
    density_histogram,
    explained_variance,
    fvu,
    kl_div,
    l0,
    loss_recovered,
    mse,
    next_token_ce,
)

__all__ = [
    "ReconstructionStats",
    "cosine",
    "dead_fraction",
    "dense_fraction",
    "density_histogram",
    "evaluate_dictionary",
    "explained_variance",
    "fvu",
    "kl_div",
    "l0",
    "loss_recovered",
    "mse",
    "next_token_ce",
]
