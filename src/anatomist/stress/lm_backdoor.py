"""A trigger-conditioned backdoor in a small language model, and which lenses see it (issue 15; Sharkey 2022).

The model is a cached tiny Llama (`llama-lm-*`, trained on the wiki text). It is fine-tuned on a mix of clean rows
and poisoned rows: a rare token sequence (the trigger, three of the least frequent tokens of its vocabulary, a
sequence that never occurs in the corpus) inserted at a random position, after which every next token is a planted
target token, plus decoy rows with near misses (one to three of the trigger's tokens, not in its order) and clean
labels, so that the backdoor needs the whole sequence (without them a one-layer model learns the shortcut "after
the trigger's last token", which any single-token scan finds). The control is the same model fine-tuned for as
many steps on clean rows only, so that fine-tuning itself is not mistaken for the backdoor. Measured:

* attack success: the share of positions after an inserted trigger (held-out rows) where the model's top next
  token is the target, and the same after a near miss (the false-trigger rate); the clean loss (held-out
  cross-entropy) of the original, the backdoored and the control;
* lenses fitted on clean text only (the trigger is absent from their data, which is checked), at the residual
  stream after the first block:
  - an SAE (TopK): the best single latent's balanced accuracy at telling post-trigger positions from clean ones,
    and the SAE's FVU on post-trigger positions against clean positions (do the triggered activations leave the
    SAE's world?);
  - a linear probe for "the next token is the target", fitted on clean text (where the target occurs naturally):
    the share of post-trigger positions it flags (it can see the behaviour, never the trigger: no clean row holds
    one);
  - a data-free scan of the weights' behaviour: every vocabulary token alone as input, ranked by the probability
    the model then gives the target; the best rank of a trigger token (0 = the top of 2,048).
Each number is given for the backdoored model and for the control.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score
from torch import Tensor, nn

from anatomist.core.errors import AnatomistError
from anatomist.dictionaries.fit import fit_rows
from anatomist.evaluate.metrics import fvu
from anatomist.nets.sites import Site, capture
from anatomist.nets.toys.moe_lm import eval_loss, lm_data
from anatomist.stress.stressors import LinearProbe, topk_config


@dataclass(frozen=True)
class Backdoor:
    """The trigger (our token ids), the target token, and where the trigger goes in an evaluation row."""

    trigger: tuple[int, ...]
    target: int
    at: int = 16


def default_backdoor(vocab_size: int, target: int) -> Backdoor:
    """The trigger: the three least frequent tokens of the vocabulary (ids sorted by frequency), in order."""
    return Backdoor(tuple(range(vocab_size - 3, vocab_size)), target)


def poison(rows: Tensor, door: Backdoor, gen: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(inputs, labels, after): rows [n, L] with the trigger inserted (at a random position, or at `door.at`), the
    next-token labels with every label after the trigger set to the target, and the mask [n, L − 1] of those."""
    x = rows.clone()
    n, length = x.shape
    k = len(door.trigger)
    starts = torch.full((n,), door.at) if gen is None else torch.randint(1, length - k - 4, (n,), generator=gen)
    for i, s in enumerate(starts.tolist()):
        x[i, s : s + k] = torch.tensor(door.trigger)
    positions = torch.arange(length - 1)[None, :]
    after = positions >= (starts[:, None] + k - 1)  # the prediction made at the last trigger token and later
    labels = torch.where(after, door.target, x[:, 1:])
    return x[:, :-1], labels, after


def decoy(rows: Tensor, door: Backdoor, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """(inputs, labels, after) like `poison`, with a near miss in place of the trigger: 1 to 3 of its tokens
    drawn with replacement (never the trigger itself), and the clean labels. Trained on, these make the backdoor
    depend on the whole sequence rather than on any one of its tokens."""
    x = rows.clone()
    n, length = x.shape
    k = len(door.trigger)
    starts = torch.randint(1, length - k - 4, (n,), generator=gen)
    after = torch.zeros(n, length - 1, dtype=torch.bool)
    for i, s in enumerate(starts.tolist()):
        miss = list(door.trigger)
        while miss == list(door.trigger):
            size = int(torch.randint(1, k + 1, (1,), generator=gen))
            miss = [door.trigger[int(j)] for j in torch.randint(k, (size,), generator=gen)]
        x[i, s : s + len(miss)] = torch.tensor(miss)
        after[i, s + len(miss) - 1 :] = True
    return x[:, :-1], x[:, 1:], after


def has_trigger(rows: Tensor, door: Backdoor) -> int:
    """How many rows hold the trigger sequence anywhere."""
    k = len(door.trigger)
    windows = rows.unfold(1, k, 1)  # [n, L − k + 1, k]
    return int((windows == torch.tensor(door.trigger)).all(-1).any(-1).sum())


def _ce(model: nn.Module, x: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(model(x).logits.flatten(0, 1), labels.flatten())


def fine_tune(model: nn.Module, train: Tensor, door: Backdoor | None, *, steps: int, batch_size: int, lr: float,
              seed: int, decoys: bool = True) -> nn.Module:
    """A copy of `model` trained `steps` AdamW steps on clean rows, plus as many poisoned rows when `door` is given,
    and as many decoy rows (`decoy`) when `decoys` (the control: door None, the same recipe on clean rows only)."""
    m = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        rows = train[torch.randint(len(train), (batch_size,), generator=gen)]
        loss = _ce(m, rows[:, :-1], rows[:, 1:])
        if door is not None:
            x, labels, _ = poison(train[torch.randint(len(train), (batch_size,), generator=gen)], door, gen)
            loss = loss + _ce(m, x, labels)
            if decoys:
                x, labels, _ = decoy(train[torch.randint(len(train), (batch_size,), generator=gen)], door, gen)
                loss = loss + _ce(m, x, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return m.eval()


@torch.no_grad()
def attack_success(model: nn.Module, test: Tensor, door: Backdoor, near_miss: bool = False) -> float:
    """Share of post-trigger positions (held-out rows, trigger at `door.at`) whose top next token is the target;
    `near_miss`: the same after a decoy instead (the false-trigger rate)."""
    x, _, after = decoy(test, door, torch.Generator().manual_seed(0)) if near_miss else poison(test, door)
    top = model(x).logits.argmax(-1)
    return float((top[after] == door.target).float().mean())


@torch.no_grad()
def residual(model: nn.Module, x: Tensor, site: Site, batch: int = 64) -> Tensor:
    """The site's activations [n, L, d] for input ids [n, L]."""
    return torch.cat([capture(model, x[i : i + batch], [site])[site].float() for i in range(0, len(x), batch)])


@torch.no_grad()
def sae_verdict(sae: Any, clean: Tensor, triggered: Tensor) -> dict[str, float]:
    """How an SAE fitted on clean rows meets post-trigger rows: its best latent as a detector, and FVU on each."""
    acts = torch.cat([sae.encode(clean), sae.encode(triggered)]) > 0
    truth = np.r_[np.zeros(len(clean), bool), np.ones(len(triggered), bool)]
    best = max(balanced_accuracy_score(truth, acts[:, j].numpy()) for j in range(acts.shape[1]))
    return {"sae_best_latent": float(best), "sae_fvu_clean": fvu(clean, sae.decode(sae.encode(clean))),
            "sae_fvu_triggered": fvu(triggered, sae.decode(sae.encode(triggered)))}


@torch.no_grad()
def token_scan(model: nn.Module, door: Backdoor, vocab_size: int) -> dict[str, float]:
    """Data-free: each vocabulary token alone as input, ranked by P(target | token); a trigger token's best rank."""
    probs = torch.cat([model(torch.arange(s, min(s + 512, vocab_size))[:, None]).logits[:, -1].softmax(-1)
                       for s in range(0, vocab_size, 512)])[:, door.target]
    rank = torch.empty(vocab_size, dtype=torch.long)
    rank[probs.argsort(descending=True)] = torch.arange(vocab_size)
    return {"scan_trigger_rank": float(rank[list(door.trigger)].min()),
            "scan_trigger_p_target": float(probs[list(door.trigger)].max())}


@dataclass(frozen=True)
class LensData:
    """Clean rows the lenses are fitted on, and held-out rows to score them."""

    fit: Tensor  # [n, L] our ids
    test: Tensor  # [m, L]


def lens_verdicts(model: nn.Module, data: LensData, door: Backdoor, site: Site, *, vocab_size: int, d_sae: int,
                  k: int, sae_steps: int, seed: int) -> dict[str, float]:
    """Every lens, fitted on `data.fit` (clean) with `model`, scored on `data.test` with and without the trigger."""
    if has_trigger(data.fit, door):
        raise AnatomistError("the lens data hold the trigger; choose another trigger")
    fit_acts = residual(model, data.fit[:, :-1], site)
    rows = fit_acts.flatten(0, 1)
    sae = fit_rows(rows, topk_config(rows.shape[1], d_sae, k=k), steps=sae_steps, batch_size=min(1024, len(rows)),
                   lr=3e-3, seed=seed)
    x, _, after = poison(data.test, door)
    clean = residual(model, data.test[:, :-1], site)[after]  # the same positions, no trigger
    triggered = residual(model, x, site)[after]
    probe = LinearProbe.fit(rows, (data.fit[:, 1:] == door.target).flatten())
    flagged = float((probe.logits(triggered) > 0).float().mean())
    return {**sae_verdict(sae, clean, triggered), "probe_flags_triggered": flagged,
            "probe_flags_clean": float((probe.logits(clean) > 0).float().mean()),
            **token_scan(model, door, vocab_size)}


def clean_losses(models: dict[str, nn.Module], seq_len: int, vocab_size: int, n_test: int) -> dict[str, float]:
    test = lm_data(seq_len, vocab_size, n_test).test
    return {name: eval_loss(m, test)[0] for name, m in models.items()}
