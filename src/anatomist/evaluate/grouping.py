"""How well a grouping of rows (clusters, experts, paths) lines up with a label: purity and mutual information."""

from __future__ import annotations

import numpy as np


def contingency(groups: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Counts [n_groups, n_labels] of rows per (group, label), over the distinct values present."""
    _, g = np.unique(groups, return_inverse=True)
    _, y = np.unique(labels, return_inverse=True)
    table = np.zeros((g.max() + 1, y.max() + 1), dtype=np.int64)
    np.add.at(table, (g, y), 1)
    return table


def purity(groups: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose group's most common label is their own."""
    return float(contingency(groups, labels).max(1).sum() / len(labels))


def entropy_bits(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def mutual_info_bits(groups: np.ndarray, labels: np.ndarray) -> float:
    table = contingency(groups, labels)
    return entropy_bits(table.sum(0)) + entropy_bits(table.sum(1)) - entropy_bits(table.ravel())
