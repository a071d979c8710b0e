"""Linear probes: what can be read off the control part, and what off the content part?

The paper's hypotheses: surface features (token identity, position) live in content; control
predicts routing. The control subspace has only `rank` <= n_experts dimensions while content has
d - rank, so besides the two parts we probe two references of fair size: content restricted to
a random `rank`-dimensional subspace of itself ("content_r", as many numbers as control), and the
full hidden state ("full").

Each probe is a multinomial logistic regression (scikit-learn) on standardised features, fit on
a random 75% of the tokens and scored on the other 25%; `chance` is the test accuracy of always
answering the training set's most common class.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from anatomist.core.errors import AnatomistError
from anatomist.routes.control import split_coordinates
from anatomist.routes.paths import Routing

FEATURES = ("control", "content", "content_r", "full")


def probe_accuracy(
    x: torch.Tensor | np.ndarray, y: np.ndarray, seed: int = 0, test_frac: float = 0.25, max_iter: int = 300
) -> dict[str, float]:
    """Test accuracy of a linear probe predicting labels y [N] (-1: skip) from features x [N, k]."""
    xs = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    y = np.asarray(y)
    if xs.ndim != 2 or len(xs) != len(y):
        raise AnatomistError(f"probe: features {list(xs.shape)} do not match labels {list(y.shape)}")
    keep = y >= 0
    xs, y = xs[keep].astype(np.float64), y[keep]
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_frac))
    test, train = order[:n_test], order[n_test:]
    if n_test == 0 or len(np.unique(y[train])) < 2:
        raise AnatomistError(f"probe: need at least two classes and a test split; got {len(y)} labelled tokens")
    # sklearn is heavy (~1.5 s to import): loaded when a probe is fitted, not whenever the CLI starts
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    with warnings.catch_warnings():  # a probe that has not fully converged is still a fair (lower) bound
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(xs[train], y[train])
    majority = np.bincount(y[train]).argmax()
    return {
        "accuracy": float((clf.predict(xs[test]) == y[test]).mean()),
        "chance": float((y[test] == majority).mean()),
        "n_train": int(len(train)),
        "n_test": int(n_test),
        "n_classes": int(len(np.unique(y))),
    }


def feature_sets(routing: Routing, i: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The four feature sets of `FEATURES` at the i-th layer of the band, as coordinates."""
    hidden = routing.hidden[i]
    control, content = split_coordinates(routing.layers[i], hidden)
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(content.shape[1], control.shape[1], generator=gen, dtype=content.dtype))
    return {"control": control, "content": content, "content_r": content @ q, "full": hidden}


def probe_layer(
    routing: Routing, i: int, targets: dict[str, np.ndarray], seed: int = 0, max_tokens: int = 8000
) -> dict[str, dict[str, dict[str, float]]]:
    """{target: {feature set: probe result}} at the i-th layer of the band.

    Targets are given per token (e.g. token identity, position bucket); the expert the token is
    routed to here ("expert") and at the next layer of the band ("next_expert") are added.
    """
    top1 = routing.top1.numpy()  # [N, L]
    all_targets = dict(targets)
    all_targets["expert"] = top1[:, i]
    if i + 1 < top1.shape[1]:
        all_targets["next_expert"] = top1[:, i + 1]
    n = top1.shape[0]
    for name, y in all_targets.items():
        if len(y) != n:
            raise AnatomistError(f"probe target '{name}' has {len(y)} values for {n} tokens")
    rows = np.random.default_rng(seed).permutation(n)[:max_tokens]  # probes on a subsample keep this CPU-cheap
    feats = {k: v[rows] for k, v in feature_sets(routing, i, seed).items()}
    return {
        name: {f: probe_accuracy(x, np.asarray(y)[rows], seed) for f, x in feats.items()}
        for name, y in all_targets.items()
    }
