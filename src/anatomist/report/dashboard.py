"""Feature dashboards: one streamed pass of a dictionary over activations, written as compact JSON.

`dashboard_pass(sae, blocks)` encodes block after block of activation rows (bounded memory: see
`LatentStats`); `write_dashboard(...)` turns the statistics into `dashboard.json` (the index: density,
mean and max activation and top tokens of every latent) and `latents_NNN.json` chunks (per latent: top
contexts with per-token activations, samples at quantiles of its activation distribution, its histogram,
its logit effects through the unembedding, its nearest latents by decoder cosine; top images for image
inputs). `anatomist report` renders these files as pages.
"""

from __future__ import annotations

import base64
import math
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anatomist.core.errors import AnatomistError
from anatomist.core.io import atomic_write_text, dumps
from anatomist.report.stats import LatentStats

FORMAT = "anatomist-dashboard/1"
INDEX = "dashboard.json"
IMAGES = "images.json"  # a vision dashboard's per-image view (`report.vision`), beside the index
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.9, 0.99)


def chunk_name(i: int) -> str:
    return f"latents_{i:03d}.json"


def _r(x: float) -> float | None:
    """3 significant digits (None for NaN: a position outside the context's sequence)."""
    return None if math.isnan(x) else float(f"{x:.3g}")


@torch.no_grad()
def dashboard_pass(encode: Callable[[Tensor], Tensor], d_sae: int, blocks: Iterable[tuple[Tensor, Tensor]],
                   **stats_kw: Any) -> LatentStats:
    """Stream `blocks` of (rows [n, d_in], sequence id of each row [n]) through `encode`; returns the statistics."""
    stats = LatentStats(d_sae, **stats_kw)
    for x, seq in blocks:
        stats.update(encode(x), seq)
    return stats


@torch.no_grad()
def logit_effects(w_dec: Tensor, unembed: Tensor, k: int = 10, chunk: int = 256) -> tuple[Tensor, ...]:
    """Each decoder row through the unembedding [vocab, d]: top-k promoted and suppressed token ids and values."""
    if w_dec.shape[1] != unembed.shape[1]:
        raise AnatomistError(f"decoder rows have width {w_dec.shape[1]}, the unembedding {list(unembed.shape)}")
    out: list[list[Tensor]] = [[], [], [], []]
    for part in w_dec.split(chunk):
        logits = part.float() @ unembed.float().T  # [chunk, vocab]
        pos, neg = logits.topk(k, dim=1), (-logits).topk(k, dim=1)
        for lst, t in zip(out, (pos.indices, pos.values, neg.indices, -neg.values), strict=True):
            lst.append(t)
    return tuple(torch.cat(t) for t in out)


@torch.no_grad()
def nearest_latents(w_dec: Tensor, k: int = 8, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """For every latent, the k others whose decoder rows have the largest cosine: (indices, cosines) [d_sae, k]."""
    unit = w_dec.float() / w_dec.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    k = min(k, len(unit) - 1)
    idx, cos = [], []
    for start in range(0, len(unit), chunk):
        sim = unit[start : start + chunk] @ unit.T  # [chunk, d_sae]
        sim[torch.arange(len(sim)), torch.arange(start, start + len(sim))] = -math.inf  # not itself
        top = sim.topk(k, dim=1)
        idx.append(top.indices)
        cos.append(top.values)
    return torch.cat(idx), torch.cat(cos)


REPLACEMENT = "\ufffd"  # what a decoder shows for an incomplete UTF-8 sequence
MAX_CHAR_TOKENS = 4  # a UTF-8 character has at most 4 bytes, so at most 4 byte-level tokens


class Source:
    """What the rows are: tokens (ids [n_seqs, L] + positions [n_rows, 2] + decode) or images [N, H, W] in [0, 1].

    `decode` turns a list of token ids into text (a tokenizer's decode).
    """

    def __init__(self, *, tokens: Tensor | None = None, positions: Tensor | None = None,
                 decode: Callable[[list[int]], str] | None = None, images: Tensor | None = None) -> None:
        if (tokens is None) == (images is None):
            raise AnatomistError("a dashboard source is either tokens (with positions and decode) or images")
        if tokens is not None and (positions is None or decode is None):
            raise AnatomistError("token dashboards need the row positions [n_rows, 2] and a decode function")
        self.tokens, self.positions, self.images = tokens, positions, images
        self.kind = "tokens" if tokens is not None else "images"
        self._decode = decode
        self._names: dict[int, str] = {}

    def name(self, token: int) -> str:
        """The text of one token id (decoded once, then remembered)."""
        if token not in self._names:
            assert self._decode is not None
            self._names[token] = self._decode([token])
        return str(self._names[token])

    def context_text(self, ids: list[int]) -> list[str] | None:
        """The text each token of a context shows, where some token holds only part of a UTF-8 character (its own
        decode has U+FFFD); None when every token's own text is right. The token that completes a character shows
        all of it and the tokens before it in the character show nothing, so the context reads as the text does."""
        names = [self.name(i) if i >= 0 else "" for i in ids]
        if not any(REPLACEMENT in n for n in names):
            return None
        assert self._decode is not None
        shown = list(names)
        pending: list[int] = []
        for j, (i, n) in enumerate(zip(ids, names, strict=True)):
            if i < 0 or (REPLACEMENT not in n and not pending):
                continue
            pending = [*pending, j][-MAX_CHAR_TOKENS:]
            for start in range(len(pending)):  # later starts skip an orphan byte (a context begun mid-character)
                text = self._decode([ids[p] for p in pending[start:]])
                if REPLACEMENT not in text:
                    for p in pending[start:]:
                        shown[p] = ""
                    shown[j], pending = text, []
                    break
        return shown

    def context_ids(self, rows: Tensor, ctx: Tensor, before: int) -> Tensor:
        """Token ids [..., width] of the rows from `before` ahead of each of `rows` [...]; -1 where `ctx` is NaN
        (outside the sequence) or the row is -1 (no example)."""
        assert self.tokens is not None and self.positions is not None
        width = ctx.shape[-1]
        r = rows[..., None] - before + torch.arange(width)
        inside = ~ctx.isnan() & (rows[..., None] >= 0) & (r >= 0) & (r < len(self.positions))
        pos = self.positions[r.clamp(0, len(self.positions) - 1)]  # [..., width, 2]
        ids = self.tokens[pos[..., 0], pos[..., 1]]
        return torch.where(inside, ids, torch.full_like(ids, -1))

    def image(self, row: int) -> list[Any]:
        """[H, W, base64 bytes] of a grayscale image [H, W]; [H, W, base64, 3] (HWC bytes) of a colour one [3, H, W]."""
        assert self.images is not None
        img = (self.images[row].float().clamp(0, 1) * 255).round().to(torch.uint8)
        if img.ndim == 3:  # colour [3, H, W]: bytes in pixel order, RGB together
            hwc = img.permute(1, 2, 0).contiguous()
            return [int(hwc.shape[0]), int(hwc.shape[1]), base64.b64encode(hwc.numpy().tobytes()).decode(), 3]
        return [int(img.shape[0]), int(img.shape[1]), base64.b64encode(img.numpy().tobytes()).decode()]


def _round3(t: Tensor) -> list[Any]:
    """Values to 3 decimals as nested lists (NaN -> 0: outside positions carry token id -1 instead)."""
    return ((t.double().nan_to_num(0.0) * 1000).round() / 1000).tolist()


def _write_compact(path: Path, obj: Any) -> None:
    atomic_write_text(path, dumps(obj, separators=(",", ":")))


class _Examples:
    """Examples (top or sampled) of every latent as plain lists, converted from tensors in one go."""

    def __init__(self, src: Source, stats: LatentStats, val: Tensor, row: Tensor, ctx: Tensor) -> None:
        self.src = src
        self.val, self.row = _round3(val), row.tolist()
        if src.kind == "tokens":
            self.ids = src.context_ids(row, ctx, stats.before).tolist()
            self.acts = _round3(ctx)

    def get(self, at: tuple[int, ...], tok: dict[str, str], images: dict[str, Any]) -> dict[str, Any]:
        val: Any = self.val
        row: Any = self.row
        for a in at:
            val, row = val[a], row[a]
        ex: dict[str, Any] = {"act": val, "row": row}
        if self.src.kind == "tokens":
            ids, acts = self.ids, self.acts
            for a in at:
                ids, acts = ids[a], acts[a]
            for i in ids:
                if i >= 0:
                    tok.setdefault(str(i), self.src.name(i))
            ex.update(ctx=ids, acts=acts)
            text = self.src.context_text(ids)
            if text is not None:
                ex["text"] = text
        else:
            images.setdefault(str(row), self.src.image(row))
        return ex


def write_dashboard(out: str | Path, stats: LatentStats, src: Source, w_dec: Tensor, *, unembed: Tensor | None = None,
                    meta: dict[str, Any] | None = None, chunk_size: int = 128,
                    decorate: Callable[[int, dict[str, Any]], None] | None = None) -> Path:
    """Write `out/dashboard.json` and `out/latents_NNN.json`; returns `out`.

    `decorate(i, record)` may add keys to latent i's record before it is written (the vision dashboard adds
    per-example patch heatmaps and the class counts of the top images)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    d = stats.d
    near = nearest_latents(w_dec)
    near_idx, near_cos = near[0].tolist(), _round3(near[1])
    effects = [t.tolist() for t in logit_effects(w_dec, unembed)] if unembed is not None else None
    top = _Examples(src, stats, stats.top_val.T, stats.top_row.T, stats.top_ctx.transpose(0, 1))  # [d][k]
    cells = stats.quantile_cells(QUANTILES)  # [d, nq]
    samples = _Examples(src, stats, stats.s_val, stats.s_row, stats.s_ctx)  # [d * bins]
    edges = (10 ** stats.bin_edges().double()).tolist()
    hist = stats.hist.view(d, stats.bins)
    top_text: list[list[str]] = []  # per latent: the most frequent tokens at the centre of its top contexts
    n_chunks = -(-d // chunk_size)
    for c in range(n_chunks):
        tok: dict[str, str] = {}
        images: dict[str, Any] = {}
        latents = []
        for i in range(c * chunk_size, min(d, (c + 1) * chunk_size)):
            tops = [top.get((i, j), tok, images) for j in range(stats.k) if top.val[i][j] > 0]
            quant = []
            for q, cell in zip(QUANTILES, cells[i].tolist(), strict=True):
                if cell >= 0:
                    b = cell % stats.bins
                    quant.append({"q": q, "lo": _r(edges[b]), "hi": _r(edges[b + 1]), **samples.get((cell,), tok,
                                                                                                   images)})
            nz = hist[i].nonzero().flatten()
            h = {"first": int(nz[0]), "counts": hist[i, int(nz[0]) : int(nz[-1]) + 1].tolist()} if len(nz) else None
            nearest = [[j, v] for j, v in zip(near_idx[i], near_cos[i], strict=True)]
            rec: dict[str, Any] = {"i": i, "top": tops, "quantiles": quant, "hist": h, "near": nearest}
            if effects is not None:
                pid, pv, nid, nv = (t[i] for t in effects)
                for t in pid + nid:
                    tok.setdefault(str(t), src.name(t))
                rec["logits"] = {"pos": [[a, _r(b)] for a, b in zip(pid, pv, strict=True)],
                                 "neg": [[a, _r(b)] for a, b in zip(nid, nv, strict=True)]}
            if decorate is not None:
                decorate(i, rec)
            latents.append(rec)
            centre = Counter(ex["ctx"][stats.before] for ex in tops) if src.kind == "tokens" else Counter()
            top_text.append([tok[str(t)] for t, _ in centre.most_common(5) if t >= 0])
        _write_compact(out / chunk_name(c), {"format": FORMAT, "chunk": c, "tokens": tok, "images": images,
                                              "latents": latents})
    index = {
        "format": FORMAT, "kind": src.kind, "d_sae": d, "n_rows": stats.n_rows, "chunk_size": chunk_size,
        "n_chunks": n_chunks, "window": [stats.before, stats.after], "top_k": stats.k,
        "hist_log10": [stats.lo, stats.hi, stats.bins], "meta": meta or {},
        "latents": {"density": [_r(x) for x in (stats.fires.double() / max(stats.n_rows, 1)).tolist()],
                    "mean": [_r(x) for x in (stats.total / stats.fires.clamp_min(1)).tolist()],
                    "max": [_r(x) for x in stats.max.tolist()], "top_tokens": top_text},
    }
    _write_compact(out / INDEX, index)
    return out
