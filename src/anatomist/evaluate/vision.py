"""A dictionary on a vision transformer's tokens, scored per token role, beside a position-only baseline.

A ViT's residual stream carries a large per-position component (the learned position embeddings, plus the
background patches that look alike in every image), so a low FVU at a low L0 can come from positions alone.
`token_role_metrics` reports FVU / L0 / cosine separately on CLS, register and patch rows, and the FVU of the
position-only baseline: every token replaced by the mean of its position over the same images (a code that
knows where a token is but nothing about the image; in-sample, so a slightly optimistic baseline). A
dictionary that explains no more than that has learnt positions, not image content.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from anatomist.evaluate.metrics import ReconstructionStats
from anatomist.nets.sites import Site, capture
from anatomist.nets.vision import VisionLayout, image_hw


def _values(model: nn.Module, images: torch.Tensor, sites: list[Site], batch_size: int) -> dict[Site, torch.Tensor]:
    """Each site's value on every image: [n, tokens, d] (CPU, float32)."""
    dev = next(model.parameters()).device
    parts: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
    for start in range(0, len(images), batch_size):
        got = capture(model, images[start : start + batch_size].to(dev), sites)
        for s in sites:
            parts[s].append(got[s].float().cpu())
    return {s: torch.cat(p) for s, p in parts.items()}


def _fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    stats = ReconstructionStats()
    stats.update(x, x_hat, torch.zeros(len(x), 1))
    return stats.result()["fvu"]


@torch.no_grad()
def token_role_metrics(sae: Any, model: nn.Module, images: torch.Tensor, site: Site | str, layout: VisionLayout, *,
                       target_site: Site | str | None = None, batch_size: int = 100) -> dict[str, Any]:
    """Per role ("cls", "register", "patch"): n_rows, fvu, l0, cosine of `sae`; and `position_mean_fvu` (all rows
    and per role): the FVU of predicting each token by its position's mean over these images."""
    read = Site.parse(site)
    write = Site.parse(target_site) if target_site is not None else read
    values = _values(model, images, [read] if write == read else [read, write], batch_size)
    a_in, a_out = values[read], values[write]
    acts = sae.encode(a_in.reshape(-1, a_in.shape[-1])).view(*a_in.shape[:2], -1).float()
    recon = sae.decode(acts.reshape(-1, acts.shape[-1])).view(a_out.shape).float()
    baseline = a_out.mean(0, keepdim=True).expand_as(a_out)
    roles = layout.token_roles(image_hw(images))
    out: dict[str, Any] = {"position_mean_fvu": _fvu(a_out.reshape(-1, a_out.shape[-1]),
                                                     baseline.reshape(-1, a_out.shape[-1]))}
    for role in ("cls", "register", "patch"):
        at = torch.tensor([r.position for r in roles if r.role == role], dtype=torch.long)
        if len(at) == 0:
            continue
        x, x_hat, a = (t[:, at].reshape(-1, t.shape[-1]) for t in (a_out, recon, acts))
        stats = ReconstructionStats()
        stats.update(x, x_hat, a)
        result = stats.result()
        out[role] = {k: result[k] for k in ("n_rows", "fvu", "l0", "cosine")}
        out[role]["position_mean_fvu"] = _fvu(x, baseline[:, at].reshape(-1, x.shape[-1]))
    return out
