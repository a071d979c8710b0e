"""Sparse TopK/BatchTopK training: gradients flow only through the active latents.

A TopK SAE step needs one dense matmul: the encoder pre-activations [batch, d_sae], from which the active
latents are picked without building a graph. Everything after that touches only the nnz = batch * k active
(row, latent) pairs:

    forward   recon[b]  = sum_n act_n * W_dec[col_n], act_n = relu(pre_n)   (embedding_bag over the rows' latents)
    backward  g_act[n]  = <grad_recon[row_n], W_dec[col_n]>         (SDDMM: a dense product sampled at the pairs)
              g_pre[n]  = g_act[n] * 1[act_n > 0]
              dW_dec[i] = sum_{n: col_n = i} act_n * grad_recon[row_n]         (embedding_bag, bags = latents)
              dW_enc[:, i] = sum_{n: col_n = i} g_pre[n] * x_in[row_n]         (same, over the encoder input)
              db_enc[i] = sum_{n: col_n = i} g_pre[n];  d b_in = -W_enc @ db_enc  (x_in = x - b_in)

so the dense [batch, d_sae] @ [d_sae, d] products of autograd (decoder forward, dW_dec, dW_enc, dx) become
sparse ops over the nnz pairs, none of which gathers an [nnz, d] intermediate (a memory-bound 268 MB per
gather at the benchmark size, measured here at half the encoder matmul's time or more). The ops exist on
CUDA too, so the code is device-agnostic.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class SparseCode(NamedTuple):
    """Active (row, latent) pairs of a batch, sorted by row, with their activations relu(pre-activation)."""

    rows: Tensor  # [nnz] long, non-decreasing
    cols: Tensor  # [nnz] long, latent index
    acts: Tensor  # [nnz] activation of each pair, relu of its encoder pre-activation (>= 0)
    crow: Tensor  # [batch + 1] long, row b's pairs are crow[b]:crow[b+1] (CSR row pointers)

    @property
    def batch(self) -> int:
        return self.crow.shape[0] - 1


def _crow(sorted_ids: Tensor, n: int) -> Tensor:
    """CSR row pointers [n + 1] of sorted ids in [0, n)."""
    return torch.searchsorted(sorted_ids, torch.arange(n + 1, device=sorted_ids.device))


@functools.lru_cache(maxsize=8)
def _fixed_rows(batch: int, k: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """rows and CSR row pointers of k pairs per row (cached: the same every step)."""
    rows = torch.arange(batch, device=device).repeat_interleave(k)
    return rows, torch.arange(0, batch * k + 1, k, device=device)


@torch.no_grad()
def topk_code(pre: Tensor, k: int) -> SparseCode:
    """The k largest pre-activations of each row, ReLU after (Gao et al.)."""
    vals, idx = pre.topk(k, dim=-1, sorted=False)  # [batch, k]
    rows, crow = _fixed_rows(pre.shape[0], k, pre.device)
    return SparseCode(rows, idx.reshape(-1), vals.reshape(-1).relu_(), crow)


@torch.no_grad()
def batch_topk_code(pre: Tensor, k: int) -> SparseCode:
    """The k * batch largest positive pre-activations of the whole batch (Bussmann et al.)."""
    batch, d_sae = pre.shape
    kb = min(k * batch, pre.numel())
    # A row holds at most kb of the winners, but nearly always far fewer: pick each row's top 4k first and
    # take the batch top-kb among those; that is exact unless some row gave all its 4k candidates.
    per_row = min(d_sae, 4 * k)
    cand_vals, cand_idx = pre.topk(per_row, dim=-1, sorted=False)  # [batch, per_row]
    vals, flat = cand_vals.reshape(-1).topk(kb, sorted=False)
    if per_row < d_sae and bool((torch.bincount(flat // per_row, minlength=batch) == per_row).any()):
        vals, flat = pre.reshape(-1).topk(kb, sorted=False)
        cand_idx = torch.arange(d_sae, device=pre.device).expand(batch, d_sae)
        per_row = d_sae
    keep = vals > 0
    vals, flat = vals[keep], flat[keep]
    flat, order = flat.sort()
    rows = torch.div(flat, per_row, rounding_mode="floor")
    cols = cand_idx.reshape(-1)[flat]
    return SparseCode(rows, cols, vals[order], _crow(rows, batch))


@torch.no_grad()
def dead_topk_code(pre: Tensor, dead_mask: Tensor, k: int) -> SparseCode | None:
    """AuxK (Gao et al.): the top k pre-activations among dead latents of each row; None when none is dead."""
    dead = dead_mask.nonzero().squeeze(-1)  # [n_dead]
    if dead.numel() == 0:
        return None
    code = topk_code(pre.index_select(1, dead), min(k, dead.numel()))
    return code._replace(cols=dead[code.cols])


@torch.no_grad()
def exact_values(code: SparseCode, x_in: Tensor, W_enc: Tensor, b_enc: Tensor) -> SparseCode:
    """`code` with each pair's activation recomputed in x_in's precision, relu(<x_in[row], W_enc[:, col]> +
    b_enc[col]): a dense product sampled at the nnz pairs, k / d_sae of the encoder matmul's work. For pairs
    picked from low-precision (bf16) pre-activations, so that the values the step trains on are full precision."""
    pre = sampled_dot(x_in, W_enc.t(), code.cols, code.crow, code.acts) + b_enc[code.cols]
    return code._replace(acts=pre.relu_())


class _SparseDecode(torch.autograd.Function):
    """recon[b] = sum over the row's pairs of act * W_dec[col], with gradients to the encoder params."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        b_in: Tensor | None,
        W_enc: Tensor,
        b_enc: Tensor,
        W_dec: Tensor,
        rows: Tensor,
        cols: Tensor,
        acts: Tensor,
        crow: Tensor,
        x_in: Tensor,
    ) -> Tensor:
        ctx.save_for_backward(x_in, W_enc, W_dec, rows, cols, acts, crow)
        return _bags(cols, W_dec, crow, acts.to(W_dec.dtype))

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x_in, W_enc, W_dec, rows, cols, acts, crow = ctx.saved_tensors
        d_sae = W_dec.shape[0]
        need_x, need_b_in, need_w_enc, need_b_enc, need_w_dec = ctx.needs_input_grad[:5]
        grad_out = grad_out.contiguous()  # [batch, d_out]
        g_pre = sampled_dot(grad_out, W_dec, cols, crow, acts).mul_(acts > 0)  # [nnz]
        gx = gb_in = gw_enc = gb_enc = gw_dec = None
        if need_w_dec or need_w_enc:
            by_latent = LatentMajor(rows, cols, d_sae)
            if need_w_dec:
                gw_dec = by_latent.matmul(acts.to(grad_out.dtype), grad_out)
            if need_w_enc:
                gw_enc = by_latent.matmul(g_pre.to(x_in.dtype), x_in).t()  # [d_in, d_sae]
        if need_b_enc or need_b_in:
            g_col = torch.zeros(d_sae, dtype=g_pre.dtype, device=g_pre.device).index_add_(0, cols, g_pre)
            gb_enc = g_col if need_b_enc else None
            if need_b_in:
                gb_in = -(W_enc @ g_col.to(W_enc.dtype))  # sum over rows of -dL/dx_in
        if need_x:
            gx = _bags(cols, W_enc.t(), crow, g_pre.to(W_enc.dtype))
        return gx, gb_in, gw_enc, gb_enc, gw_dec, None, None, None, None, None


def _bags(ids: Tensor, table: Tensor, crow: Tensor, weights: Tensor) -> Tensor:
    """out[b] = sum over n in crow[b]:crow[b+1] of weights[n] * table[ids[n]]."""
    return F.embedding_bag(ids, table, crow, mode="sum", per_sample_weights=weights, include_last_offset=True)


def sampled_dot(a: Tensor, W: Tensor, cols: Tensor, crow: Tensor, any_vals: Tensor) -> Tensor:
    """out[n] = <a[row n], W[cols[n]]> for the CSR pattern (crow, cols): (a @ W^T) sampled at the pairs (SDDMM),
    without gathering rows. `any_vals` [nnz] fills the pattern; with beta=0 its values are ignored."""
    if a.dtype not in (torch.float32, torch.float64):  # the sparse kernel has no bf16/fp16 version
        return sampled_dot(a.float(), W.float(), cols, crow, any_vals.float()).to(a.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        pattern = torch.sparse_csr_tensor(crow, cols, any_vals.to(a.dtype), (a.shape[0], W.shape[0]))
        return torch.sparse.sampled_addmm(pattern, a, W.t(), beta=0.0).values()


class LatentMajor:
    """The pairs grouped by latent (one sort), for products S^T @ dense with S the [batch, d_sae] sparse matrix:
    out[i] = sum over pairs n with cols[n] = i of vals[n] * dense[rows[n]]. Each is an embedding_bag whose
    "embeddings" are the batch rows and whose bags are the latents: no [nnz, d] intermediate. (Measured here,
    one thread, batch 4096, k 32, d 512: 20 ms per product plus one 2.5 ms sort, vs 86 ms for torch's COO
    sparse @ dense and ~300 ms for gathering the [nnz, d] rows.)"""

    def __init__(self, rows: Tensor, cols: Tensor, d_sae: int):
        self.cpu = cols.is_cpu
        self.perm: Any  # numpy indices on CPU, a tensor elsewhere
        if self.cpu:
            # numpy, single-threaded: torch's parallel 1-D CPU sort took ~0.5 s here (vs ~5 ms) when the
            # cores were shared, and every small parallel op waits for a descheduled thread
            c = cols.numpy()
            self.perm = np.argsort(c)
            self.rows = torch.from_numpy(rows.numpy()[self.perm])
            self.crow = torch.from_numpy(np.searchsorted(c[self.perm], np.arange(d_sae + 1)))
        else:
            cols_sorted, perm = cols.sort()
            self.perm, self.rows, self.crow = perm, rows[perm], _crow(cols_sorted, d_sae)

    def matmul(self, vals: Tensor, dense: Tensor) -> Tensor:
        ordered = torch.from_numpy(vals.numpy()[self.perm]) if self.cpu else vals[self.perm]
        return _bags(self.rows, dense, self.crow, ordered)


def sparse_decode(
    x: Tensor,
    b_in: Tensor | None,
    W_enc: Tensor,
    b_enc: Tensor,
    W_dec: Tensor,
    code: SparseCode,
    x_in: Tensor | None = None,
) -> Tensor:
    """Decoder output (without b_dec) [batch, d_out] of the active pairs in `code`, with a sparse backward.

    The pairs' activations must equal relu(((x - b_in) @ W_enc + b_enc)[row, col]): the backward differentiates
    that expression (w.r.t. x, b_in, W_enc, b_enc) and the decoder (w.r.t. W_dec) at the active pairs only.
    `x_in`, when the caller already has it, is x - b_in (x when b_in is None).
    """
    if x_in is None:
        with torch.no_grad():
            x_in = x if b_in is None else x - b_in
    out = _SparseDecode.apply(x, b_in, W_enc, b_enc, W_dec, code.rows, code.cols, code.acts, code.crow, x_in)
    return out  # type: ignore[no-any-return]
