"""Feature absorption on a planted dictionary: a known rate when an absorbing latent takes over, 0 when none does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anatomist.features import SAEConfig, SparseDictionary, make_sae
from anatomist.interpret.absorption import LetterResult, Thresholds, absorption, first_letters, word_absorption

pytestmark = pytest.mark.usefixtures("one_thread")
D = 16
S, T, U = 0, 1, 2  # the letter directions e0, e1, e2; e3..e12 are ten specific words that start with "s"
WORDS = range(3, 13)


def letter_rows(seed: int = 0) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """100 's' words (in blocks of 10, the first 3 of each also holding a specific-word feature: 30%), 100 't' and
    100 'u' words; the test split is every other block of 10, so 30% of its 's' words carry a specific word too."""
    gen = torch.Generator().manual_seed(seed)
    rows, letters = [], []
    for i in range(100):
        x = torch.zeros(D)
        x[S] = 1.0
        if i % 10 < 3:
            x[WORDS[(i // 10) % 10]] = 1.0
        rows.append(x)
        letters.append(ord("s") - ord("a"))
    for letter, axis in (("t", T), ("u", U)):
        for _ in range(100):
            rows.append(torch.eye(D)[axis])
            letters.append(ord(letter) - ord("a"))
    x = torch.stack(rows) + 0.01 * torch.randn(300, D, generator=gen)
    test = (np.arange(300) // 10) % 2 == 1
    return x, np.array(letters), test


def planted_dictionary(absorbing: bool) -> SparseDictionary:
    """ReLU latents: 0, 1, 2 for the letters, 3..12 for the specific words.

    absorbing: latent 0 is silenced by any specific word, whose latent decodes to (e0 + e_word) / sqrt(2) and so
    carries the 's' direction; otherwise latent 0 fires on every 's' word and the word latents decode to e_word.
    """
    sae = make_sae(SAEConfig(arch="relu", d_in=D, d_sae=13, normalize_decoder=False))
    w_enc, w_dec, b_enc = torch.zeros(D, 13), torch.zeros(13, D), torch.zeros(13)
    for latent in (S, T, U):
        w_enc[latent, latent], b_enc[latent], w_dec[latent, latent] = 2.0, -1.0, 1.0
    for word in WORDS:
        if absorbing:
            w_enc[word, S] = -10.0
            w_enc[word, word] = 2**0.5
            w_dec[word, S] = w_dec[word, word] = 2**-0.5
        else:
            w_enc[word, word] = 1.0
            w_dec[word, word] = 1.0
    with torch.no_grad():
        sae.import_weights({"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": torch.zeros(D)})
    return sae.eval()


def by_letter(absorbing: bool) -> dict[str, LetterResult]:
    rows, letters, test = letter_rows()
    result = absorption(rows, letters, planted_dictionary(absorbing), test)
    assert result.probe_accuracy == 1.0
    return {r.letter: r for r in result.letters}


def test_a_planted_absorbing_latent_gives_the_planted_rate() -> None:
    results = by_letter(absorbing=True)
    s = results["s"]
    assert s.true_positives == 50 and s.main_latents == [S]
    assert s.absorption_rate == pytest.approx(0.3) and s.absorption_fraction == pytest.approx(0.3)
    assert set(s.top_absorbers) <= set(WORDS) and s.top_absorbers
    assert results["t"].absorption_rate == results["u"].absorption_rate == 0.0


def test_nothing_absorbed_gives_zero() -> None:
    results = by_letter(absorbing=False)
    assert all(r.absorption_rate == 0.0 and r.absorption_fraction == 0.0 for r in results.values())
    assert results["s"].true_positives == 50


def test_word_absorption_by_hand() -> None:
    """One word, probe along e0: main latent off and a latent at 45 degrees carrying 1.0 of a 1.0 projection."""
    w_dec = torch.tensor([[1.0, 0.0], [2**-0.5, 2**-0.5], [0.0, 1.0]])
    probe = torch.tensor([1.0, 0.0])
    residual = torch.tensor([[1.0, 1.0]])
    full, fraction, top = word_absorption(residual, torch.tensor([[0.0, 2**0.5, 0.0]]), w_dec, probe, [0])
    assert full.tolist() == [True] and fraction.tolist() == [1.0] and top.tolist() == [1]
    # the main latent carries 0.25 of it, the absorber 0.75: partial absorption 0.75, not full
    full, fraction, _ = word_absorption(residual, torch.tensor([[0.25, 0.75 * 2**0.5, 0.0]]), w_dec, probe, [0])
    assert full.tolist() == [False] and fraction.tolist() == pytest.approx([0.75])
    # an absorber carrying less than 40% of the projection is not absorption
    full, fraction, _ = word_absorption(residual, torch.tensor([[0.0, 0.3 * 2**0.5, 1.0]]), w_dec, probe, [0],
                                        Thresholds())
    assert full.tolist() == [False] and fraction.tolist() == [0.0]


def test_first_letters() -> None:
    assert first_letters(["apple", "Zoo", "moon"]).tolist() == [0, 25, 12]
