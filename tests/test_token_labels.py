"""Token labels: known answers on a hand-made vocabulary, ordering, buckets, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anatomist.core.errors import AnatomistError
from anatomist.data.token_labels import LABELS, position_buckets, token_labels


class TinyTokenizer:
    """A stand-in for a Hugging Face tokenizer: decode() of single ids and the special ids."""

    vocab = ["<s>", " the", ",", " Paris", "42", ".", " is", "\u00bf", " 3.5", "Word"]
    all_special_ids = [0]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.vocab[i] for i in ids)


def test_known_answers() -> None:
    ids = torch.tensor([[0, 1, 3, 6, 4, 5], [0, 9, 2, 1, 8, 7]])
    labels = token_labels(ids, TinyTokenizer(), top_tokens=2, n_position_buckets=4)
    assert set(labels) == set(LABELS)
    # row-major order: row 0's tokens then row 1's
    assert labels["is_punct"].values.tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 1]  # '.', ',', inverted '?'
    assert labels["is_digit"].values.tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]  # ' 3.5' is not all digits
    assert labels["capitalised"].values.tolist() == [0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0]  # '<s>' is special: 0
    assert labels["position"].values.tolist() == [0, 1, 2, 2, 3, 3] * 2
    assert labels["position"].classes == ("0", "1", "2-3", "4+")
    # the two most frequent ids are 0 and 1 (twice each); everything else is uncovered
    token = labels["token"]
    assert token.classes == ("'<s>'", "' the'")
    assert token.values.tolist() == [0, 1, -1, -1, -1, -1, 0, -1, -1, 1, -1, -1]
    assert token.covered.sum() == 4


def test_frequency_order_and_1d_input() -> None:
    ids = np.array([5, 5, 5, 2, 2, 9])
    labels = token_labels(ids, TinyTokenizer(), top_tokens=3)
    assert labels["token"].values.tolist() == [0, 0, 0, 1, 1, 2]
    assert labels["position"].values.tolist() == [0] * 6


def test_position_buckets_are_log2() -> None:
    pos = np.arange(20)
    got = position_buckets(pos, n_buckets=5)
    want = [0, 1, 2, 2, 3, 3, 3, 3] + [4] * 12
    assert got.tolist() == want


def test_bad_input() -> None:
    with pytest.raises(AnatomistError, match="integer"):
        token_labels(torch.zeros(2, 3), TinyTokenizer())
    with pytest.raises(AnatomistError, match="no decode"):
        token_labels(torch.zeros(2, 3, dtype=torch.long), object())
