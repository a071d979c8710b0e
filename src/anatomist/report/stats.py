"""Per-latent statistics over a stream of latent activations, in memory bounded by the dictionary size.

`LatentStats.update(acts, seq)` takes one block of rows in data order (`acts` [n, d_sae], `seq` [n]: which
sequence each row belongs to, so a context never crosses a sequence boundary) and keeps, per latent:

* how often it fires (> 0), the sum and max of its activations;
* a histogram of its nonzero activations on fixed log10 bins (no first pass to find a range);
* the running top-k rows, each with the latent's activations on a window of neighbouring rows
  (the context), merged block by block with one `topk` over old ∪ new;
* one uniform random sample per (latent, histogram bin), kept by priority sampling (each nonzero entry
  draws a uniform key; a cell keeps the entry with the largest key seen so far), so that samples at any
  quantile of the activation distribution can be shown, not only the top. Memory: d_sae × bins × window.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class LatentStats:
    def __init__(self, d_sae: int, top_k: int = 16, before: int = 12, after: int = 4, bins: int = 64,
                 log10_range: tuple[float, float] = (-4.0, 4.0), seed: int = 0) -> None:
        self.d, self.k, self.before, self.after, self.bins = d_sae, top_k, before, after, bins
        self.lo, self.hi = log10_range
        self.width = before + 1 + after
        self.gen = torch.Generator().manual_seed(seed)
        self.n_rows = 0
        self.fires = torch.zeros(d_sae, dtype=torch.long)  # [d]
        self.total = torch.zeros(d_sae, dtype=torch.float64)  # [d]
        self.max = torch.zeros(d_sae)  # [d]
        self.hist = torch.zeros(d_sae * bins, dtype=torch.long)  # [d * bins]
        self.top_val = torch.full((top_k, d_sae), -math.inf)  # [k, d]
        self.top_row = torch.full((top_k, d_sae), -1, dtype=torch.long)  # [k, d]
        self.top_ctx = torch.zeros(top_k, d_sae, self.width)  # [k, d, width]
        self.s_key = torch.full((d_sae * bins,), -1.0)  # [d * bins]
        self.s_row = torch.full((d_sae * bins,), -1, dtype=torch.long)
        self.s_val = torch.zeros(d_sae * bins)
        self.s_ctx = torch.zeros(d_sae * bins, self.width)  # [d * bins, width]

    def bin_edges(self) -> Tensor:
        """log10 edges [bins + 1]; the first and last bins also take everything below / above the range."""
        return torch.linspace(self.lo, self.hi, self.bins + 1)

    def _windows(self, seq: Tensor) -> Tensor:
        """Row indices [n, width] of each row's context; n (a padding row) where it leaves the sequence."""
        n = len(seq)
        idx = torch.arange(n)[:, None] + torch.arange(-self.before, self.after + 1)[None]  # [n, width]
        inside = (idx >= 0) & (idx < n)
        idx_c = idx.clamp(0, max(n - 1, 0))
        same = seq[idx_c] == seq[:, None]
        return torch.where(inside & same, idx_c, torch.full_like(idx, n))

    @torch.no_grad()
    def update(self, acts: Tensor, seq: Tensor) -> None:
        """One block of rows `acts` [n, d_sae] (float) in data order; `seq` [n] the sequence of each row."""
        n = acts.shape[0]
        if n == 0:
            return
        acts = acts.float()
        win = self._windows(seq)  # [n, width]
        padded = torch.cat([acts, torch.full((1, self.d), math.nan)])  # [n + 1, d]: NaN = outside the sequence
        fired = acts > 0
        self.fires += fired.sum(0)
        self.total += acts.clamp_min(0).sum(0, dtype=torch.float64)
        self.max = torch.maximum(self.max, acts.max(0).values)

        # running top-k: merge this block's best k per latent into the kept ones
        k = min(self.k, n)
        val, row = acts.topk(k, dim=0)  # [k, d]
        lat = torch.arange(self.d)
        ctx = padded[win[row], lat[None, :, None]]  # [k, d, width]
        all_val = torch.cat([self.top_val, val])
        keep = all_val.topk(self.k, dim=0).indices  # [k, d]
        self.top_val = all_val.gather(0, keep)
        self.top_row = torch.cat([self.top_row, row + self.n_rows]).gather(0, keep)
        idx3 = keep[..., None].expand(-1, -1, self.width)
        self.top_ctx = torch.cat([self.top_ctx, ctx]).gather(0, idx3)

        # histogram + one priority sample per (latent, bin) of the nonzero entries
        r, c = fired.nonzero(as_tuple=True)  # [nnz]
        v = acts[r, c]
        scale = self.bins / (self.hi - self.lo)
        b = ((v.log10() - self.lo) * scale).floor().long().clamp(0, self.bins - 1)
        cell = c * self.bins + b
        self.hist += torch.bincount(cell, minlength=self.d * self.bins)
        key = torch.rand(len(cell), generator=self.gen)
        best = self.s_key.clone().scatter_reduce_(0, cell, key, reduce="amax")
        win_mask = key == best[cell]  # the entries that now hold their cell
        cw = cell[win_mask]
        self.s_key[cw] = key[win_mask]
        self.s_row[cw] = r[win_mask] + self.n_rows
        self.s_val[cw] = v[win_mask]
        self.s_ctx[cw] = padded[win[r[win_mask]], c[win_mask, None]]
        self.n_rows += n

    def quantile_samples(self, latent: int, quantiles: tuple[float, ...]) -> list[dict[str, float | int]]:
        """For each quantile q: the kept sample of the bin where the latent's activation CDF crosses q."""
        counts = self.hist.view(self.d, self.bins)[latent]
        total = int(counts.sum())
        if total == 0:
            return []
        cdf = counts.cumsum(0).double() / total
        edges = self.bin_edges()
        out, seen = [], set()
        for q in quantiles:
            b = int(torch.searchsorted(cdf, torch.tensor([q], dtype=torch.float64)).clamp(max=self.bins - 1))
            cell = latent * self.bins + b
            if b in seen or self.s_row[cell] < 0:
                continue
            seen.add(b)
            out.append({"q": q, "bin": b, "lo": 10 ** float(edges[b]), "hi": 10 ** float(edges[b + 1]),
                        "cell": cell})
        return out
