"""Token-level labels computable offline from token ids alone, to score what a lens groups together.

Lenses that group tokens (polytope-lens region clusters, MoE expert paths) are judged by how
well their groups line up with simple surface properties of the tokens. This module computes
those properties for a batch of token ids with nothing but the tokenizer:

    labels = token_labels(ids, tokenizer)   # ids: LongTensor [n_seqs, seq_len] (or [n_tokens])
    labels["is_punct"].values                # int64 [n_tokens], one class index per token
    labels["token"].classes                  # names of the classes, e.g. ("' the'", "','", ...)

Every label is a `TokenLabel(name, values, classes)`: `values[i]` is the class index of token i
in row-major order (row 0's tokens, then row 1's, ...), and -1 marks a token the label does not
cover (only "token" uses it: tokens outside the `top_tokens` most frequent). Scorers drop the -1s.

The labels (`LABELS`):

- "token": token identity, for the `top_tokens` most frequent ids in `ids` (ties: smaller id first).
- "is_punct": 1 if the token's text, stripped of whitespace, is non-empty and all Unicode punctuation.
- "is_digit": 1 if the stripped text is non-empty and all digits.
- "capitalised": 1 if the stripped text starts with an upper-case letter.
- "position": the token's position in its row, in log2 buckets 0, 1, 2-3, 4-7, ... (the last one
  open-ended, from 2**(n_buckets-2) on); for 1-D `ids` every token has position 0.

Special tokens (BOS/EOS/PAD, the tokenizer's `all_special_ids`) are 0 for the three yes/no labels.
`tokenizer` is anything with `decode(list[int]) -> str` (every Hugging Face tokenizer).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from anatomist.core.errors import AnatomistError

LABELS = ("token", "is_punct", "is_digit", "capitalised", "position")


@dataclass(frozen=True)
class TokenLabel:
    """One labelling of a batch of tokens: a class index per token (-1: not covered) and the class names."""

    name: str
    values: np.ndarray  # int64 [n_tokens]
    classes: tuple[str, ...]

    @property
    def covered(self) -> np.ndarray:
        """bool [n_tokens]: which tokens this label gives a class to."""
        return self.values >= 0


def _is_punct(text: str) -> bool:
    return bool(text) and all(unicodedata.category(c).startswith("P") for c in text)


def _is_digit(text: str) -> bool:
    return bool(text) and all(c.isdigit() for c in text)


def _capitalised(text: str) -> bool:
    return bool(text) and text[0].isupper()


_YES_NO: dict[str, Callable[[str], bool]] = {"is_punct": _is_punct, "is_digit": _is_digit, "capitalised": _capitalised}


def position_buckets(positions: np.ndarray, n_buckets: int) -> np.ndarray:
    """Bucket b holds positions [2**(b-1), 2**b) for b >= 1 and position 0 for b = 0; the last is open-ended."""
    pos = np.asarray(positions, dtype=np.int64)
    buckets = np.where(pos > 0, np.floor(np.log2(np.maximum(pos, 1))).astype(np.int64) + 1, 0)
    return np.minimum(buckets, n_buckets - 1)


def _bucket_names(n_buckets: int) -> tuple[str, ...]:
    names = ["0"]
    for b in range(1, n_buckets):
        lo, hi = 2 ** (b - 1), 2**b - 1
        names.append(f"{lo}+" if b == n_buckets - 1 else (str(lo) if lo == hi else f"{lo}-{hi}"))
    return tuple(names)


def token_labels(
    ids: torch.Tensor | np.ndarray,
    tokenizer: Any,
    *,
    top_tokens: int = 20,
    n_position_buckets: int = 8,
) -> dict[str, TokenLabel]:
    """Every label in `LABELS` for the tokens of `ids` ([n_seqs, seq_len] or [n_tokens]), in row-major order."""
    arr = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    if arr.ndim not in (1, 2) or not np.issubdtype(arr.dtype, np.integer):
        raise AnatomistError(
            f"token_labels: ids must be integer [n_seqs, seq_len] or [n_tokens], got {arr.dtype} "
            f"shape {list(arr.shape)}"
        )
    if top_tokens < 1 or n_position_buckets < 2:
        raise AnatomistError(
            f"token_labels: top_tokens must be >= 1 and n_position_buckets >= 2, got "
            f"{top_tokens} and {n_position_buckets}"
        )
    if not callable(getattr(tokenizer, "decode", None)):
        raise AnatomistError(f"token_labels: tokenizer {type(tokenizer).__name__} has no decode(ids) method")
    flat = arr.reshape(-1).astype(np.int64)  # [n_tokens]
    unique, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    texts = [tokenizer.decode([int(i)]) for i in unique]  # one decode per distinct id, not per token
    special = set(getattr(tokenizer, "all_special_ids", None) or [])

    labels: dict[str, TokenLabel] = {}
    # frequent tokens first; np.lexsort sorts by the last key first: count descending, then id ascending
    order = np.lexsort((unique, -counts))[:top_tokens]
    token_class = np.full(len(unique), -1, dtype=np.int64)
    token_class[order] = np.arange(len(order))
    labels["token"] = TokenLabel("token", token_class[inverse], tuple(repr(texts[i]) for i in order))

    for name, test in _YES_NO.items():
        per_id = np.array(
            [0 if int(u) in special else int(test(t.strip())) for u, t in zip(unique, texts, strict=True)],
            dtype=np.int64,
        )
        labels[name] = TokenLabel(name, per_id[inverse], ("no", "yes"))

    positions = (
        np.broadcast_to(np.arange(arr.shape[-1]), arr.shape).reshape(-1) if arr.ndim == 2 else np.zeros_like(flat)
    )
    labels["position"] = TokenLabel(
        "position", position_buckets(positions, n_position_buckets), _bucket_names(n_position_buckets)
    )
    return labels
