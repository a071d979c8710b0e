"""Feature absorption on the first-letter task (Chanin et al. 2024, "A is for Absorption"; SAEBench's metric).

A feature is absorbed when a latent that should represent it (say "starts with S") stays silent on some inputs
that have it (" short"), because a more specific latent (" short" itself) fires instead and carries the feature's
direction in its decoder row. The measurement:

1. Words: single-token words (a space and 2+ letters) from the vocabulary, labelled by first letter, read at the
   word's position after a short prompt (`first_letter_prompts`). A multinomial logistic-regression probe on the raw
   activations (train split) gives each letter's ground-truth direction p (unit, raw activation space).
2. Main latents per letter, by k-sparse probing on the train split: latents ranked by mean activation on the
   letter's words minus the rest; k grows from 1 while a logistic regression on the top k+1 beats the top k by more
   than `f1_jump` in F1 on the test split (so a split feature, e.g. two "S" latents, gives two main latents).
3. On the test words of the letter that the probe classifies correctly, with a the dictionary's activations and
   c_j = a_j (W_dec[j] . p) latent j's share of the projection (x - b_dec) . p of the activation on p:
   - full absorption (Chanin et al.): every main latent is off, (x - b_dec) . p > 0, and the latent with the largest
     share has cos(W_dec[j], p) >= `cos_threshold` and carries at least `share_threshold` of the projection;
   - absorption fraction (SAEBench's partial absorption): the part of the projection carried by the up to
     `max_absorbers` largest positive shares of non-main latents with cos >= `fraction_cos_threshold`, relative
     to that plus the main latents' share (0 when the main latents carry it all or the others carry less than
     `share_threshold`, 1 when the main latents carry nothing).
   The absorption rate of a letter is the fraction of those words fully absorbed; the summary is its mean over
   letters with at least `min_words` such words.

The projection is of x - b_dec, not x: the latents can only account for what the decoder bias does not (SAEBench
projects x itself; with a bias that has a component along p the two differ).
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from torch import Tensor

from anatomist.core.errors import AnatomistError
from anatomist.features import SparseDictionary

WORD = re.compile(r"^ [A-Za-z]{2,}$")
PROMPT = "Words and their first letters: tiger T, ocean O, marble M, pencil P,"


# --- the words ----------------------------------------------------------------------------------------------


def single_token_words(tokenizer: Any, n: int, seed: int = 0) -> tuple[list[int], list[str]]:
    """Up to n random vocabulary tokens that are a space and 2+ ASCII letters: (ids, texts without the space)."""
    vocab = len(tokenizer)
    found = [(i, str(tokenizer.decode([i]))) for i in range(vocab)]
    words = [(i, t[1:]) for i, t in found if WORD.match(t)]
    if not words:
        raise AnatomistError("the tokenizer has no single-token words (a space and 2+ letters)")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(words), min(n, len(words)), replace=False).tolist())
    return [words[c][0] for c in chosen], [words[c][1] for c in chosen]


def first_letters(words: Sequence[str]) -> np.ndarray:
    """Class index 0-25 of each word's first letter (case ignored)."""
    return np.array([string.ascii_lowercase.index(w[0].lower()) for w in words], dtype=np.int64)


def first_letter_prompts(tokenizer: Any, word_ids: Sequence[int], prompt: str = PROMPT) -> torch.Tensor:
    """[n, L] token ids: BOS, the prompt, then the word; all of one length, the word last (where it is read)."""
    prefix = list(tokenizer(prompt)["input_ids"])
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and (not prefix or prefix[0] != bos):
        prefix = [bos, *prefix]
    return torch.tensor([[*prefix, w] for w in word_ids])


# --- probe and main latents ---------------------------------------------------------------------------------


def letter_probe(rows: np.ndarray, letters: np.ndarray, seed: int = 0) -> tuple[LogisticRegression, float]:
    """A multinomial logistic regression on rows divided by one global scale (so its weights are directions in
    raw activation space), and that scale."""
    scale = float(np.sqrt((rows**2).mean())) or 1.0
    probe = LogisticRegression(max_iter=2000, random_state=seed)
    probe.fit(rows / scale, letters)
    return probe, scale


def probe_direction(probe: LogisticRegression, c: int) -> Tensor:
    """The unit direction raising class c's logit (a two-class probe has one row: +w for class 1, -w for 0)."""
    w = probe.coef_[c] if probe.coef_.shape[0] > 1 else probe.coef_[0] * (1 if c == 1 else -1)
    direction = torch.from_numpy(np.asarray(w)).float()
    return direction / direction.norm().clamp_min(1e-12)


def main_latents(codes_train: np.ndarray, y_train: np.ndarray, codes_test: np.ndarray, y_test: np.ndarray,
                 max_k: int = 10, f1_jump: float = 0.03) -> list[int]:
    """The letter's main latents: the top k by mean difference, k grown while F1 rises by more than `f1_jump`."""
    ranked = top_by_mean_difference_signed(codes_train, y_train, max_k)

    def f1(k: int) -> float:
        top = ranked[:k]
        if len(np.unique(y_train)) < 2:
            return 0.0
        probe = LogisticRegression(max_iter=1000).fit(codes_train[:, top], y_train)
        return float(f1_score(y_test, probe.predict(codes_test[:, top]), zero_division=0))

    k, best = 1, f1(1)
    while k < min(max_k, len(ranked)):
        nxt = f1(k + 1)
        if nxt - best <= f1_jump:
            break
        k, best = k + 1, nxt
    return ranked[:k].tolist()


def top_by_mean_difference_signed(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """The k latents most active on y=1 relative to y=0 (signed: a latent that fires less does not represent it)."""
    diff = x[y == 1].mean(0) - x[y == 0].mean(0)
    return np.argsort(-diff, kind="stable")[:k]


# --- absorption per word ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thresholds:
    """Chanin et al. / SAEBench's thresholds (their defaults)."""

    cos_threshold: float = 0.025
    share_threshold: float = 0.4
    fraction_cos_threshold: float = 0.1
    max_absorbers: int = 3


def word_absorption(residual: Tensor, codes: Tensor, w_dec: Tensor, probe_dir: Tensor, main: Sequence[int],
                    th: Thresholds = Thresholds()) -> tuple[Tensor, Tensor, Tensor]:
    """(fully absorbed [n] bool, absorption fraction [n], top absorbing latent [n]) of n words.

    residual [n, d]: activations minus the decoder bias; codes [n, d_sae]; w_dec [d_sae, d]; probe_dir [d] (unit).
    """
    cos = (w_dec @ probe_dir) / w_dec.norm(dim=-1).clamp_min(1e-12)  # [d_sae]
    shares = codes * (w_dec @ probe_dir)  # [n, d_sae]
    proj = residual @ probe_dir  # [n]
    is_main = torch.zeros(w_dec.shape[0], dtype=torch.bool)
    is_main[list(main)] = True
    main_off = (codes[:, is_main] <= 0).all(-1)
    top_share, top = shares.masked_fill(is_main, -torch.inf).max(-1)
    full = main_off & (proj > 0) & (cos[top] >= th.cos_threshold) & (top_share >= th.share_threshold * proj)
    return full, _absorption_fraction(shares, proj, cos, is_main, th), top


def _absorption_fraction(shares: Tensor, proj: Tensor, cos: Tensor, is_main: Tensor, th: Thresholds) -> Tensor:
    main_share = shares[:, is_main].sum(-1)
    candidates = shares.masked_fill(is_main | (cos < th.fraction_cos_threshold) | (shares <= 0), 0.0)
    absorbed = candidates.topk(min(th.max_absorbers, shares.shape[1]), dim=-1).values.sum(-1)
    partial = torch.minimum(absorbed, proj - main_share)
    fraction = (partial / (partial + main_share).clamp_min(1e-12)).clamp(0, 1)
    none = (main_share >= proj) | (absorbed < th.share_threshold * proj)
    return torch.where(none, 0.0, torch.where(main_share <= 0, 1.0, fraction))


# --- the evaluation -------------------------------------------------------------------------------------------


@dataclass
class LetterResult:
    letter: str
    words: int  # test words of the letter
    true_positives: int  # of them, classified correctly by the probe
    main_latents: list[int]
    absorption_rate: float
    absorption_fraction: float
    absorbed_examples: list[str] = field(default_factory=list)
    top_absorbers: list[int] = field(default_factory=list)


@dataclass
class AbsorptionResult:
    letters: list[LetterResult]
    probe_accuracy: float  # the first-letter probe's accuracy on the test words

    def mean(self, key: str, min_true_positives: int = 1) -> float:
        """The mean of a per-letter number over letters with at least `min_true_positives` words scored."""
        values = [getattr(r, key) for r in self.letters if r.true_positives >= min_true_positives]
        return float(np.mean(values)) if values else float("nan")


@torch.no_grad()
def absorption(rows: Tensor, letters: np.ndarray, sae: SparseDictionary, test: np.ndarray, *,
               words: Sequence[str] | None = None, max_k: int = 10, f1_jump: float = 0.03,
               th: Thresholds = Thresholds(), seed: int = 0) -> AbsorptionResult:
    """Absorption per letter present in both splits; rows [n, d] at the words, letters [n] class indices,
    `test` [n] bool marks the held-out words the probe and the main-latent F1s are measured on."""
    if not len(rows) == len(letters) == len(test):
        raise AnatomistError(f"absorption: {len(rows)} rows, {len(letters)} letters, {len(test)} test flags")
    x = rows.float()
    codes = sae.encode(x).float()
    probe, scale = letter_probe(x[~test].numpy(), letters[~test], seed)
    predicted = probe.predict(x[test].numpy() / scale)
    b_dec, w_dec = sae.b_dec.detach().float(), sae.W_dec.detach().float()
    train_codes, test_codes = codes[~test].numpy(), codes[test].numpy()
    out = []
    for c, cls in enumerate(probe.classes_):
        y_train, y_test = letters[~test] == cls, letters[test] == cls
        if not y_test.any() or y_train.all():
            continue
        main = main_latents(train_codes, y_train.astype(int), test_codes, y_test.astype(int), max_k, f1_jump)
        tp = np.flatnonzero(y_test & (predicted == cls))
        direction = probe_direction(probe, c)
        idx = torch.from_numpy(np.flatnonzero(test)[tp])
        full, fraction, top = word_absorption(x[idx] - b_dec, codes[idx], w_dec, direction, main, th)
        named = [words[i] for i in idx[full].tolist()] if words is not None else []
        out.append(LetterResult(string.ascii_lowercase[int(cls)], int(y_test.sum()), len(tp), main,
                                float(full.float().mean()) if len(tp) else float("nan"),
                                float(fraction.mean()) if len(tp) else float("nan"),
                                named[:5], sorted(set(top[full].tolist()))[:5]))
    return AbsorptionResult(out, float((predicted == letters[test]).mean()))
