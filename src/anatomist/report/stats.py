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

    def _contexts(self, acts: Tensor, win: Tensor, rows: Tensor, lat: Tensor) -> Tensor:
        """The activations of latent lat[m] on the context window of row rows[m]: [m, width], NaN outside."""
        idx = win[rows]  # [m, width]
        inside = idx < len(acts)
        ctx = acts[idx.clamp(max=len(acts) - 1), lat[:, None]]
        return torch.where(inside, ctx, torch.full_like(ctx, math.nan))

    @torch.no_grad()
    def update(self, acts: Tensor, seq: Tensor) -> None:
        """One block of rows `acts` [n, d_sae] (float) in data order; `seq` [n] the sequence of each row.

        Everything is computed from the nonzero entries, so a sparse code (TopK: k per row) costs O(n·k)
        after the one dense `acts > 0`.
        """
        n = acts.shape[0]
        if n == 0:
            return
        acts = acts.float()
        win = self._windows(seq)  # [n, width]
        r, c = (acts > 0).nonzero(as_tuple=True)  # [nnz], row-major: rows ascending
        v = acts[r, c]
        self.fires += torch.bincount(c, minlength=self.d)
        self.total += torch.bincount(c, weights=v.double(), minlength=self.d)
        self.max.scatter_reduce_(0, c, v, reduce="amax")
        self._merge_top(acts, win, r, c, v)
        self._sample(acts, win, r, c, v)
        self.n_rows += n

    def _merge_top(self, acts: Tensor, win: Tensor, r: Tensor, c: Tensor, v: Tensor) -> None:
        """Entries above their latent's current k-th value, best k per latent, merged into the kept top-k."""
        cand = v > self.top_val[-1, c]
        r, c, v = r[cand], c[cand], v[cand]
        if len(v) == 0:
            return
        order = v.argsort(descending=True, stable=True)
        order = order[c[order].argsort(stable=True)]  # grouped by latent, largest first within a latent
        r, c, v = r[order], c[order], v[order]
        starts = torch.cumsum(torch.bincount(c, minlength=self.d), 0) - torch.bincount(c, minlength=self.d)
        rank = torch.arange(len(c)) - starts[c]
        keep = rank < self.k
        r, c, v, rank = r[keep], c[keep], v[keep], rank[keep]
        new_val = torch.full((self.k, self.d), -math.inf)
        new_row = torch.full((self.k, self.d), -1, dtype=torch.long)
        new_ctx = torch.zeros(self.k, self.d, self.width)
        new_val[rank, c] = v
        new_row[rank, c] = r + self.n_rows
        new_ctx[rank, c] = self._contexts(acts, win, r, c)
        all_val = torch.cat([self.top_val, new_val])  # [2k, d]
        pick = all_val.topk(self.k, dim=0).indices  # [k, d]
        self.top_val = all_val.gather(0, pick)
        self.top_row = torch.cat([self.top_row, new_row]).gather(0, pick)
        self.top_ctx = torch.cat([self.top_ctx, new_ctx]).gather(0, pick[..., None].expand(-1, -1, self.width))

    def _sample(self, acts: Tensor, win: Tensor, r: Tensor, c: Tensor, v: Tensor) -> None:
        """Histogram counts, and one priority sample per (latent, log10 bin): the entry with the largest key."""
        scale = self.bins / (self.hi - self.lo)
        b = ((v.log10() - self.lo) * scale).floor().long().clamp(0, self.bins - 1)
        cell = c * self.bins + b
        self.hist += torch.bincount(cell, minlength=self.d * self.bins)
        key = torch.rand(len(cell), generator=self.gen)
        best = self.s_key.clone().scatter_reduce_(0, cell, key, reduce="amax")
        won = key == best[cell]  # the entries that now hold their cell
        cw = cell[won]
        self.s_key[cw] = key[won]
        self.s_row[cw] = r[won] + self.n_rows
        self.s_val[cw] = v[won]
        self.s_ctx[cw] = self._contexts(acts, win, r[won], c[won])

    def quantile_cells(self, quantiles: tuple[float, ...]) -> Tensor:
        """[d, len(quantiles)] sample cells (latent * bins + bin): for each q, the bin where the latent's CDF of
        nonzero activations crosses q; -1 where the latent never fired or an earlier q already chose that bin."""
        counts = self.hist.view(self.d, self.bins).double()
        cdf = counts.cumsum(1) / counts.sum(1, keepdim=True).clamp_min(1)  # [d, bins]
        q = torch.tensor(quantiles, dtype=torch.float64)
        b = (cdf[:, None, :] < q[None, :, None]).sum(-1).clamp(max=self.bins - 1)  # [d, nq]
        cells = torch.arange(self.d)[:, None] * self.bins + b
        dup = torch.zeros_like(b, dtype=torch.bool)
        dup[:, 1:] = b[:, 1:] == b[:, :-1]  # b is non-decreasing in q: repeats are adjacent
        bad = dup | (self.s_row[cells] < 0) | (counts.sum(1, keepdim=True) == 0)
        return torch.where(bad, torch.full_like(cells, -1), cells)
