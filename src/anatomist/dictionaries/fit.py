"""Fit a sparse dictionary to rows held in memory (MNIST pixels, another SAE's decoder rows).

`anatomist.features.train_sae` trains on a model's site through the activation store; the dictionaries
studied here are fitted to small tensors that are already in memory, so this is the same objective
(squared error + sparsity + AuxK, unit decoder rows, inputs scaled to E‖x‖² = d_in, scale folded back
into the weights) in a loop over shuffled rows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from anatomist.core import AnatomistError, seed_everything
from anatomist.features.base import SAEConfig, SparseDictionary, make_sae
from anatomist.features.train import fold_scale


def fit_rows(
    rows: Tensor,
    cfg: SAEConfig,
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    decay_frac: float = 0.3,
    dead_rows: int | None = None,
    seed: int = 0,
) -> SparseDictionary:
    """Train a fresh `cfg` dictionary on rows [n, d_in] for `steps` Adam steps; returns it in eval mode.

    The learning rate decays linearly to 0 over the last `decay_frac` of the steps. A latent is dead (for
    AuxK) once it has not fired for `dead_rows` rows (default: two passes over the data).
    """
    if rows.ndim != 2 or rows.shape[1] != cfg.d_in:
        raise AnatomistError(f"fit_rows: rows have shape {list(rows.shape)}; need [n, {cfg.d_in}]")
    if len(rows) < batch_size:
        raise AnatomistError(f"fit_rows: {len(rows)} rows is fewer than one batch of {batch_size}")
    gen = seed_everything(seed)
    sae = make_sae(cfg)
    rows = rows.to(torch.float32)
    scale = math.sqrt(cfg.d_in / float(rows.double().pow(2).sum(-1).mean()))  # E‖s·x‖² = d_in
    with torch.no_grad():
        sae.b_dec.copy_(rows.mean(0) * scale)  # start from the mean, as train_sae does
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    decay_start = steps - int(decay_frac * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1.0 if s < decay_start else 1 - (s - decay_start) / max(1, steps - decay_start)
    )
    dead_after = dead_rows if dead_rows is not None else 2 * len(rows)
    since_fired = torch.zeros(cfg.d_sae, dtype=torch.long)
    order, pos = torch.randperm(len(rows), generator=gen), 0
    sae.train()
    for _ in range(steps):
        if pos + batch_size > len(rows):
            order, pos = torch.randperm(len(rows), generator=gen), 0
        x = rows[order[pos : pos + batch_size]] * scale  # [batch, d_in]
        pos += batch_size
        out = sae.train_forward(x, dead_mask=since_fired >= dead_after)
        loss = (x - out.recon).pow(2).sum(-1).mean() + out.sparsity_loss + out.aux_loss
        if not torch.isfinite(loss):
            raise AnatomistError(f"fit_rows: the loss became {loss.item()} (lower lr?)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.before_step()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        sae.after_step()
        sched.step()
        with torch.no_grad():
            since_fired += batch_size
            since_fired[out.fired] = 0
    fold_scale(sae, scale, scale)
    return sae.eval()
