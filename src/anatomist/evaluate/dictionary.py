"""Evaluate a sparse dictionary (SAE or transcoder) on a model: reconstruction, sparsity, spliced loss.

`evaluate_dictionary` runs the model over token sequences (or images with labels) and reports
the shared metrics (see `anatomist.evaluate.metrics`); a classifier also gets its top-1 accuracy clean,
spliced and zero-ablated. With `spliced`, each batch is run three
times in full: clean (reading the site), with the site replaced by the dictionary's
reconstruction, and with the site zero-ablated; the CE numbers count only the positions whose
site value was replaced (so with `exclude_bos`, the untouched BOS position does not dilute them).
A transcoder reads `site` and replaces `target_site` with its prediction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from anatomist.core.errors import AnatomistError
from anatomist.core.progress import progress
from anatomist.data.store import position_mask
from anatomist.evaluate.metrics import (
    DENSE_THRESHOLD,
    ReconstructionStats,
    density_histogram,
    kl_div,
    loss_recovered,
    next_token_ce,
)
from anatomist.nets.sites import Site, capture, primary, run_model, splice


class Dictionary(Protocol):
    """What evaluation needs of a dictionary: latents from inputs, outputs from latents."""

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, acts: torch.Tensor) -> torch.Tensor: ...


def dictionary_widths(sae: Any) -> tuple[int | None, int | None]:
    """(d_in, d_out) from a dictionary's config, where it has one."""
    cfg = getattr(sae, "cfg", None)
    d_in = getattr(cfg, "d_in", None)
    d_out = getattr(cfg, "d_out", None) or d_in
    return d_in, d_out


def check_width(sae: Any, site: Site, width: int, role: str = "input") -> None:
    """A dictionary whose d_in (or d_out) differs from the site's width gets a clear error."""
    d_in, d_out = dictionary_widths(sae)
    want = d_in if role == "input" else d_out
    if want is not None and want != width:
        name = "d_in" if role == "input" else "d_out"
        raise AnatomistError(f"dictionary has {name} {want} but site '{site}' has width {width}")


def features_last(value: torch.Tensor) -> torch.Tensor:
    """A site's value with its feature dimension last: conv maps [b, C, *spatial] -> [b, *spatial, C]."""
    return value.movedim(1, -1) if value.ndim >= 4 else value


def features_back(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Undo `features_last` for a value shaped like the site's `like`."""
    return value.movedim(-1, 1) if like.ndim >= 4 else value


def _reconstruct(sae: Dictionary, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(acts [..., d_sae], recon [..., d_out]) for x [..., d_in] of any leading shape."""
    rows = x.reshape(-1, x.shape[-1])
    acts = sae.encode(rows)
    recon = sae.decode(acts)
    return acts.reshape(*x.shape[:-1], -1), recon.reshape(*x.shape[:-1], -1)


def _rows(value: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """[n, d] rows of a feature-last value: kept positions of [b, pos, d], or everything."""
    return value[keep] if keep is not None else value.reshape(-1, value.shape[-1])


def _stash(store: dict[Site, torch.Tensor], site: Site) -> Callable[[torch.Tensor], torch.Tensor]:
    def keep(value: torch.Tensor) -> torch.Tensor:
        store[site] = value.detach()
        return value

    return keep


def _replace_kept(new: torch.Tensor, keep: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Splice function: `new` at kept positions of a [b, pos, d] value, the original elsewhere."""

    def fn(value: torch.Tensor) -> torch.Tensor:
        if keep is None or value.ndim != 3:
            return new.to(value.dtype)
        return torch.where(keep[..., None].to(value.device), new.to(value.dtype), value)

    return fn


def batch_bounds(n: int, n_spliced: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, end) of each batch, none straddling `n_spliced`: the spliced sequences are exactly the first
    `n_spliced`, whatever the batch size."""
    ends = [*range(batch_size, n_spliced, batch_size), n_spliced, *range(n_spliced + batch_size, n, batch_size), n]
    bounds = zip([0, *ends], ends, strict=False)
    return [(a, b) for a, b in bounds if b > a]


@torch.no_grad()
def evaluate_dictionary(
    sae: Dictionary,
    model: nn.Module,
    inputs: torch.Tensor,
    site: Site | str,
    *,
    target_site: Site | str | None = None,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    pad_id: int | None = None,
    exclude_bos: bool = True,
    batch_size: int = 8,
    spliced: bool = True,
    spliced_seqs: int | None = None,
    dense_threshold: float = DENSE_THRESHOLD,
    histogram_bins: int = 20,
) -> dict[str, Any]:
    """Reconstruction and sparsity over every row of `inputs`; spliced-model losses over the first `spliced_seqs`.

    inputs: token ids [n, seq] for a language model (next-token CE), or any inputs with `labels`
    [n] for a classifier (CE against the labels). Returns a flat dict of numbers plus
    `density_histogram`.
    """
    read = Site.parse(site)
    write = Site.parse(target_site) if target_site is not None else read
    if len(inputs) == 0:
        raise AnatomistError(f"evaluate_dictionary: no inputs to evaluate at site '{read}' (0 sequences)")
    sites = [read] if write == read else [read, write]
    n_spliced = len(inputs) if spliced_seqs is None else min(spliced_seqs, len(inputs))
    stats = ReconstructionStats()
    ce_sum = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    correct = dict.fromkeys(ce_sum, 0)  # classifier: top-1 hits per forward
    diff_sq = 0.0  # classifier: Σ over examples of (CE spliced − CE clean)², for the standard error of the increase
    kl_sum, n_pred = 0.0, 0
    dev = next(iter(model.parameters()), torch.empty(0)).device
    for start, end in progress(batch_bounds(len(inputs), n_spliced, batch_size), desc="evaluate"):
        x = inputs[start:end].to(dev)
        m = None if attention_mask is None else attention_mask[start:end].to(dev)
        model_in: Any = x if m is None else {"input_ids": x, "attention_mask": m}
        keep = position_mask(x, m, pad_id, exclude_bos)
        do_splice = spliced and start < n_spliced
        if do_splice:  # full clean forward: the site values and the clean output at once
            values: dict[Site, torch.Tensor] = {}
            with splice(model, {s: _stash(values, s) for s in sites}):
                clean = primary(run_model(model, model_in))
        else:
            values = capture(model, model_in, sites, stop_early=True)
        a_in, a_out = features_last(values[read]), features_last(values[write])
        check_width(sae, read, a_in.shape[-1], "input")
        check_width(sae, write, a_out.shape[-1], "output")
        acts, recon = _reconstruct(sae, a_in)
        if recon.shape != a_out.shape:
            raise AnatomistError(
                f"dictionary output has shape {list(recon.shape)}, site '{write}' has {list(a_out.shape)}"
            )
        rows = keep.to(a_in.device) if keep is not None and a_in.ndim == 3 else None
        stats.update(_rows(a_out, rows), _rows(recon, rows), _rows(acts, rows))
        if not do_splice:
            continue
        new = features_back(recon, values[write])
        with splice(model, {write: _replace_kept(new, keep)}):
            with_sae = primary(run_model(model, model_in))
        with splice(model, {write: _replace_kept(torch.zeros_like(new), keep)}):
            zeroed = primary(run_model(model, model_in))
        if labels is not None:  # classifier: CE against the labels, KL per example
            y = labels[start:end].to(dev)
            per_example = {name: nn.functional.cross_entropy(logits.float(), y, reduction="none")
                           for name, logits in (("clean", clean), ("spliced", with_sae), ("zero", zeroed))}
            for name, logits in (("clean", clean), ("spliced", with_sae), ("zero", zeroed)):
                ce_sum[name] += float(per_example[name].sum())
                correct[name] += int((logits.argmax(-1) == y).sum())
            diff_sq += float((per_example["spliced"] - per_example["clean"]).pow(2).sum())
            kl_sum += float(kl_div(clean, with_sae).sum())
            n_pred += len(y)
            continue
        if clean.ndim != 3 or x.ndim != 2:
            raise AnatomistError(
                f"spliced losses need a language model (logits [batch, pos, vocab]) or labels; "
                f"the model returned shape {list(clean.shape)}"
            )
        counted = torch.ones_like(x[:, 1:], dtype=torch.bool) if keep is None else keep[:, :-1].clone()
        if m is not None:
            counted &= m[:, 1:].bool()
        for name, logits in (("clean", clean), ("spliced", with_sae), ("zero", zeroed)):
            ce_sum[name] += float(next_token_ce(logits, x, counted).sum())
        kl_sum += float((kl_div(clean[:, :-1], with_sae[:, :-1]) * counted).sum())
        n_pred += int(counted.sum())
    if stats.n == 0:
        raise AnatomistError(f"evaluation saw no rows at site '{read}' (all positions masked?)")
    out: dict[str, Any] = {"site": str(read), **stats.result(dense_threshold)}
    if write != read:
        out["target_site"] = str(write)
    if spliced and n_pred > 0:
        ce = {k: v / n_pred for k, v in ce_sum.items()}
        out.update(
            n_predictions=float(n_pred),
            ce_clean=ce["clean"],
            ce_spliced=ce["spliced"],
            ce_increase=ce["spliced"] - ce["clean"],
            ce_zero=ce["zero"],
            kl=kl_sum / n_pred,
            loss_recovered=loss_recovered(ce["clean"], ce["spliced"], ce["zero"]),
        )
        if labels is not None:
            out.update({f"accuracy_{k}": v / n_pred for k, v in correct.items()})
            # paired over examples: is a spliced CE below the clean one (Prisma's finding) more than noise?
            var = max(diff_sq / n_pred - out["ce_increase"] ** 2, 0.0) * n_pred / max(n_pred - 1, 1)
            out["ce_increase_se"] = math.sqrt(var / n_pred)
    out["density_histogram"] = density_histogram(stats.rates(), bins=histogram_bins)
    return out
