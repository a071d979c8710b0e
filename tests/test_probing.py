"""k-sparse probing: a planted latent is found and read at k=1, a random basis is not; the offline token tasks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anatomist.core.errors import AnatomistError
from anatomist.features import fit_basis
from anatomist.interpret.probing import balanced_split, sparse_probing, token_tasks, top_by_mean_difference

pytestmark = pytest.mark.usefixtures("one_thread")


def planted(n: int = 3000, d: int = 32, coordinate: int = 5, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Gaussian rows whose coordinate `coordinate` is the label (0 or 1) exactly; every other one is noise."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(n, d, generator=gen)
    labels = (torch.rand(n, generator=gen) < 0.3).long()
    rows[:, coordinate] = labels.float()
    return rows, labels.numpy()


def test_a_latent_equal_to_the_label_is_read_at_k1_and_a_random_basis_is_not() -> None:
    rows, labels = planted()
    bases = {"neurons": fit_basis("neurons", rows), "random": fit_basis("random", rows, seed=1)}
    result = sparse_probing(rows, {"planted": labels}, bases, ks=(1, 2, 32), n_per_class=400)
    acc = result.accuracy["planted"]
    assert acc["neurons k=1"] == 1.0 and acc["full"] > 0.98
    assert acc["random k=1"] < 0.75 and acc["random k=2"] < 0.8  # the label is spread over every random direction
    assert acc["random k=32"] > 0.98  # all directions together hold it again (a rotation)
    assert result.sizes["planted"]["train"] == 640 and result.sizes["planted"]["test"] == 160


def test_mean_difference_ranks_the_planted_coordinate_first() -> None:
    rows, labels = planted(coordinate=11)
    assert top_by_mean_difference(rows.numpy(), labels, 3)[0] == 11


def test_balanced_split_is_balanced_disjoint_and_seeded() -> None:
    labels = np.array([1] * 30 + [0] * 200)
    split = balanced_split(labels, n_per_class=25, train_frac=0.8, seed=3)
    assert split is not None
    assert labels[np.concatenate([split.train, split.test])].sum() == 25 and len(split.train) == 40
    assert not set(split.train) & set(split.test)
    again = balanced_split(labels, n_per_class=25, train_frac=0.8, seed=3)
    assert again is not None and np.array_equal(again.train, split.train)
    assert balanced_split(np.zeros(10, dtype=int), 5, 0.8) is None


class PieceTokenizer:
    """decode([id]) gives a fixed text piece; id 0 is the BOS special token."""

    pieces = ["<s>", " In", " 19", "99", " (", "see", " x", ")", ",", " the", "re", " 3", "000", " A", "."]
    all_special_ids = [0]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.pieces[i] for i in ids)


def test_token_tasks_from_the_row_text() -> None:
    # "<s> In 1999 (see x), there 3000 A." BOS dropped
    ids = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]])
    tasks = token_tasks(ids, PieceTokenizer())
    assert tasks["starts_word"].tolist() == [1, 0, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0, 1, 0]
    assert tasks["in_parens"].tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert tasks["year"].tolist() == [0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]  # 3000 is not a year
    assert tasks["is_digit"].tolist() == [0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0]
    assert tasks["capitalised"].tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
    assert len(token_tasks(ids, PieceTokenizer(), exclude_bos=False)["year"]) == 15


def test_labels_must_match_the_rows() -> None:
    rows, labels = planted(n=100)
    with pytest.raises(AnatomistError, match="task 'bad' has 99 labels for 100 activation rows"):
        sparse_probing(rows, {"bad": labels[:99]}, {"neurons": fit_basis("neurons", rows)})
