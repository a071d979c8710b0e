"""k-sparse probing (Gurnee et al. 2023, "Finding Neurons in a Haystack"; Gao et al. 2024; SAEBench's sparse
probing): how much of a binary property of the input a handful of a dictionary's latents carry.

For each task (a 0/1 label per example) the examples are balanced (as many negatives as positives, drawn at random)
and split into train and test. On the train split the latents are ranked by |mean over positives - mean over
negatives| of their activations; a logistic regression (sklearn, L2, features standardised on the train split) is
fitted on the top k, and its accuracy on the test split is the score, for each k (1, 2, 5, 20 by default). Chance is
0.5. The same is done for dense baselines (the site's neurons, PCA directions: `anatomist.features.bases`), and a
probe on every raw activation dimension gives the ceiling.

The tasks are token properties computed offline from the text (`token_tasks`): `anatomist.data.token_labels`'
is_digit, is_punct and capitalised, and from the decoded row text: starts_word (the token begins a word: its first
non-space character is a letter, and the character before it is neither a letter nor a digit), in_parens (the
token starts after an unclosed "(" of its row) and year (the token is part of a number 1000-2099 standing alone).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from anatomist.core.errors import AnatomistError
from anatomist.data.token_labels import token_labels
from anatomist.features import SparseDictionary

KS = (1, 2, 5, 20)
YEAR = re.compile(r"(?<!\d)(1\d{3}|20\d{2})(?!\d)")
TOKEN_TASKS = ("is_digit", "is_punct", "capitalised", "starts_word", "in_parens", "year")


# --- tasks -------------------------------------------------------------------------------------------------


def _row_spans(row: Sequence[int], tokenizer: Any) -> tuple[str, list[tuple[int, int]]]:
    """The row's text, token by token, and each token's (start, end) character span in it."""
    pieces = [str(tokenizer.decode([int(t)])) for t in row]
    ends = np.cumsum([len(p) for p in pieces]).tolist()
    starts = [0, *ends[:-1]]
    return "".join(pieces), list(zip(starts, ends, strict=True))


def _text_labels(text: str, spans: list[tuple[int, int]]) -> dict[str, list[int]]:
    """starts_word, in_parens and year for each token span of one row's text."""
    in_year = np.zeros(len(text) + 1, dtype=bool)
    for m in YEAR.finditer(text):
        in_year[m.start():m.end()] = True
    depth = np.cumsum([1 if c == "(" else -1 if c == ")" else 0 for c in text]) if text else np.zeros(0)
    labels: dict[str, list[int]] = {"starts_word": [], "in_parens": [], "year": []}
    for start, end in spans:
        first = start + len(text[start:end]) - len(text[start:end].lstrip())
        before = text[first - 1] if first > 0 else " "
        labels["starts_word"].append(int(first < end and text[first].isalpha() and not before.isalnum()))
        labels["in_parens"].append(int(start > 0 and depth[start - 1] > 0))
        labels["year"].append(int(in_year[start:end].any()))
    return labels


def token_tasks(ids: torch.Tensor, tokenizer: Any, *, exclude_bos: bool = True) -> dict[str, np.ndarray]:
    """Every task of `TOKEN_TASKS` as 0/1 labels [n_kept] for token ids [n_seqs, L], row-major, the first (BOS)
    position of each row left out with `exclude_bos` (matching `anatomist.interpret.reading.site_rows`)."""
    if ids.ndim != 2:
        raise AnatomistError(f"token_tasks: ids must be [n_seqs, seq_len], got shape {list(ids.shape)}")
    from_ids = token_labels(ids, tokenizer)
    per_row: dict[str, list[int]] = {"starts_word": [], "in_parens": [], "year": []}
    for row in ids.tolist():
        for name, values in _text_labels(*_row_spans(row, tokenizer)).items():
            per_row[name] += values
    tasks = {name: from_ids[name].values for name in ("is_digit", "is_punct", "capitalised")}
    tasks.update({name: np.asarray(v, dtype=np.int64) for name, v in per_row.items()})
    keep = np.ones(ids.shape, dtype=bool)
    keep[:, 0] = not exclude_bos
    return {name: tasks[name][keep.reshape(-1)] for name in TOKEN_TASKS}


# --- balanced splits and probes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """Indices of a balanced task's train and test examples, and their 0/1 labels."""

    train: np.ndarray
    test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


def balanced_split(labels: np.ndarray, n_per_class: int, train_frac: float, seed: int = 0) -> Split | None:
    """Up to `n_per_class` positives and as many negatives, shuffled, split train/test; None if a class is absent."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    n = min(n_per_class, len(pos), len(neg))
    n_train = int(round(train_frac * 2 * n))
    if n < 2 or not 0 < n_train < 2 * n:
        return None
    chosen = rng.permutation(np.concatenate([rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)]))
    y = labels[chosen]
    return Split(chosen[:n_train], chosen[n_train:], y[:n_train], y[n_train:])


def top_by_mean_difference(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """The k features with the largest |mean over y=1 - mean over y=0| (SAEBench's k-sparse selection)."""
    diff = np.abs(x[y == 1].mean(0) - x[y == 0].mean(0))
    return np.argsort(-diff, kind="stable")[:k]


def probe_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """Test accuracy of a logistic regression (features standardised on the train split) fitted on train."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    probe.fit(x_train, y_train)
    return float((probe.predict(x_test) == y_test).mean())


def sparse_probe_accuracies(codes: np.ndarray, split: Split, ks: Sequence[int]) -> dict[int, float]:
    """Test accuracy of the k-sparse probe on `codes` [n_examples, d] (rows indexed by the split), per k."""
    x_train, x_test = codes[split.train], codes[split.test]
    out = {}
    for k in ks:
        top = top_by_mean_difference(x_train, split.y_train, min(k, codes.shape[1]))
        out[k] = probe_accuracy(x_train[:, top], split.y_train, x_test[:, top], split.y_test)
    return out


# --- the evaluation -------------------------------------------------------------------------------------------


@dataclass
class ProbingResult:
    """Accuracy per task: {task: {column: accuracy}}, columns '{dictionary} k={k}' and 'full' (the ceiling)."""

    accuracy: dict[str, dict[str, float]]
    sizes: dict[str, dict[str, int]]

    def mean(self, column: str) -> float:
        values = [row[column] for row in self.accuracy.values() if column in row]
        return float(np.mean(values)) if values else float("nan")

    def columns(self) -> list[str]:
        return list(dict.fromkeys(c for row in self.accuracy.values() for c in row))


@torch.no_grad()
def _codes(dictionary: SparseDictionary, rows: torch.Tensor, batch: int = 4096) -> np.ndarray:
    return torch.cat([dictionary.encode(rows[i:i + batch]).float().cpu()
                      for i in range(0, len(rows), batch)]).numpy()


def sparse_probing(rows: torch.Tensor, tasks: Mapping[str, np.ndarray], dictionaries: Mapping[str, SparseDictionary],
                   *, ks: Sequence[int] = KS, n_per_class: int = 500, train_frac: float = 0.8, seed: int = 0,
                   full: bool = True) -> ProbingResult:
    """k-sparse probe accuracy of each dictionary on each task, over activation rows [n, d] and 0/1 labels [n].

    Only the rows some task's balanced split uses are encoded. Tasks with fewer than 2 examples of a class are
    left out (their sizes say so).
    """
    splits = {}
    for name, labels in tasks.items():
        if len(labels) != len(rows):
            raise AnatomistError(f"task '{name}' has {len(labels)} labels for {len(rows)} activation rows")
        splits[name] = balanced_split(np.asarray(labels), n_per_class, train_frac, seed)
    parts = [np.concatenate([s.train, s.test]) for s in splits.values() if s]
    used = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    where = np.full(len(rows), -1)
    where[used] = np.arange(len(used))
    raw = rows[torch.from_numpy(used)].float()
    codes = {name: _codes(d, raw) for name, d in dictionaries.items()}
    accuracy: dict[str, dict[str, float]] = {}
    for name, split in splits.items():
        if split is None:
            continue
        local = Split(where[split.train], where[split.test], split.y_train, split.y_test)
        accuracy[name] = {f"{d} k={k}": acc for d, c in codes.items()
                          for k, acc in sparse_probe_accuracies(c, local, ks).items()}
        if full:
            x = raw.numpy()
            accuracy[name]["full"] = probe_accuracy(x[local.train], local.y_train, x[local.test], local.y_test)
    sizes = {name: {"positives": int((np.asarray(t) == 1).sum()), "negatives": int((np.asarray(t) == 0).sum()),
                    "train": len(s.train) if s else 0, "test": len(s.test) if s else 0}
             for (name, t), s in zip(tasks.items(), splits.values(), strict=True)}
    return ProbingResult(accuracy, sizes)
