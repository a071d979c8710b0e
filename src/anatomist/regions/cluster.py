"""Region clustering: group inputs by how alike their spline codes are, and score the groups against labels.

The polytope lens says inputs in the same or nearby regions are treated alike by the network, so
clusters of codes should line up with what the inputs mean. To test that fairly, every
representation is clustered the same way (k-medoids, same k, same seed) and only the distance
changes: Hamming between binary codes, L1 between soft codes, Euclidean between raw activations,
cosine between activation directions. k-medoids (not k-means) because it needs only a distance.
It keeps the best of a few seeded runs (alternating updates get stuck in local optima), is fitted
on a random subsample of at most `fit_on` rows, and every row then joins its nearest medoid, so
memory stays at fit_on^2 distances.

Scores: purity (share of rows whose cluster's majority label is theirs) and normalised mutual
information (sklearn's NMI, arithmetic normalisation), with purity's chance level (the same
clusters scored against shuffled labels): purity rises with k, so only the gap over chance and
the comparison at equal k say anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.distance import cdist

from anatomist.core.errors import AnatomistError
from anatomist.evaluate.grouping import purity
from anatomist.regions.codes import SplineCodes

Metric = Literal["hamming", "l1", "euclidean", "cosine"]
Features = np.ndarray | torch.Tensor | SplineCodes


def distances(x: torch.Tensor, y: torch.Tensor, metric: Metric) -> torch.Tensor:
    """[n, m] distances between the rows of x [n, d] and y [m, d]."""
    if metric == "hamming":  # x, y in {0, 1}: count of differing units, exact in float32 below 2**24
        return x @ (1 - y).T + (1 - x) @ y.T
    if metric == "l1":  # scipy's loop is faster than torch.cdist(p=1) on CPU
        return torch.from_numpy(cdist(x.numpy(), y.numpy(), "cityblock")).float()
    if metric == "euclidean":
        return torch.cdist(x, y, p=2.0)
    if metric == "cosine":
        return 1 - F.normalize(x, dim=1) @ F.normalize(y, dim=1).T
    raise AnatomistError(f"unknown metric '{metric}'; known: {', '.join(get_args(Metric))}")


Reader = Callable[[np.ndarray], torch.Tensor]


def _reader(features: Features, metric: Metric) -> tuple[int, Reader]:
    """The number of rows, and a function giving rows (by index) as float32 tensors for `metric`.

    Spline codes stay packed: only the rows asked for are unpacked.
    """
    if isinstance(features, SplineCodes):
        codes = features
        if metric == "hamming":
            return len(codes), lambda idx: torch.from_numpy(codes.hard(idx).astype(np.float32))
        return len(codes), lambda idx: torch.from_numpy(codes.values(idx))
    rows = torch.from_numpy(features) if isinstance(features, np.ndarray) else features  # bool rows stay bool
    if not isinstance(rows, torch.Tensor) or rows.ndim != 2:
        raise AnatomistError(f"cluster: features must be a [n, d] array or SplineCodes, got {type(features).__name__}")
    return len(rows), lambda idx: rows[torch.as_tensor(idx)].float()


def kmedoids(d: torch.Tensor, k: int, gen: torch.Generator, max_iter: int = 100) -> torch.Tensor:
    """Medoid indices [k] for the distance matrix d [m, m]: k-medoids++ seeding, then alternating updates."""
    m = d.shape[0]
    medoids = [int(torch.randint(m, (1,), generator=gen))]
    for _ in range(1, k):  # seed far from the chosen medoids, with probability ~ distance^2
        near = d[:, medoids].min(1).values.clamp(min=0) ** 2
        near[medoids] = 0
        weights = near if near.sum() > 0 else torch.ones(m).index_fill(0, torch.tensor(medoids), 0)
        medoids.append(int(torch.multinomial(weights, 1, generator=gen)))
    med = torch.tensor(medoids)
    for _ in range(max_iter):
        assign = d[:, med].argmin(1)
        new = med.clone()
        for c in range(k):
            members = torch.nonzero(assign == c).flatten()
            if len(members):  # the member with the least total distance to its cluster
                new[c] = members[d[members][:, members].sum(1).argmin()]
        if torch.equal(new, med):
            break
        med = new
    return med


def best_kmedoids(d: torch.Tensor, k: int, gen: torch.Generator, restarts: int) -> torch.Tensor:
    """The lowest-cost (sum of distances to the nearest medoid) of several seeded k-medoids runs."""
    runs = [kmedoids(d, k, gen) for _ in range(restarts)]
    costs = torch.stack([d[:, med].min(1).values.sum() for med in runs])
    return runs[int(costs.argmin())]


@dataclass
class Clusters:
    """A cluster index per row, and the rows that are the medoids."""

    assignment: np.ndarray  # int64 [n]
    medoids: np.ndarray  # int64 [k], row indices
    metric: str


def cluster(
    features: Features,
    k: int,
    metric: Metric,
    *,
    fit_on: int = 2000,
    restarts: int = 5,
    seed: int = 0,
    batch: int = 2048,
) -> Clusters:
    """k-medoids clusters of the rows of `features` under `metric` (see the module docstring)."""
    if metric not in get_args(Metric):
        raise AnatomistError(f"unknown metric '{metric}'; known: {', '.join(get_args(Metric))}")
    n, read = _reader(features, metric)
    if not 1 <= k <= min(n, fit_on):
        raise AnatomistError(f"cluster: k must be between 1 and min(rows, fit_on) = {min(n, fit_on)}, got {k}")
    gen = torch.Generator().manual_seed(seed)
    fit = np.sort(torch.randperm(n, generator=gen)[: min(n, fit_on)].numpy())
    fit_rows = read(fit)
    med = best_kmedoids(distances(fit_rows, fit_rows, metric), k, gen, restarts)
    centres = fit_rows[med]
    parts = [distances(read(np.arange(i, min(i + batch, n))), centres, metric).argmin(1) for i in range(0, n, batch)]
    assign = torch.cat(parts).numpy()
    return Clusters(assign.astype(np.int64), fit[med.numpy()], metric)


def score_clusters(assignment: np.ndarray, labels: np.ndarray, seed: int = 0, shuffles: int = 5) -> dict[str, float]:
    """Purity, NMI and chance purity (shuffled labels) over the rows with a label (labels >= 0)."""
    assignment, labels = np.asarray(assignment), np.asarray(labels)
    if assignment.shape != labels.shape:
        raise AnatomistError(f"score_clusters: {assignment.shape[0]} cluster indices but {labels.shape[0]} labels")
    from sklearn.metrics import normalized_mutual_info_score  # heavy (~1.5 s): loaded when a score is asked for

    keep = labels >= 0
    a, y = assignment[keep], labels[keep]
    if len(y) == 0:
        raise AnatomistError("score_clusters: no row has a label (all labels are -1)")
    rng = np.random.default_rng(seed)
    chance = float(np.mean([purity(a, rng.permutation(y)) for _ in range(shuffles)]))
    return {
        "purity": purity(a, y),
        "chance_purity": chance,
        "majority": float(np.bincount(y).max() / len(y)),
        "nmi": float(normalized_mutual_info_score(y, a)),
        "n_scored": int(len(y)),
    }
