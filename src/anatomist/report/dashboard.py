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
from anatomist.core.io import save_json
from anatomist.report.stats import LatentStats

FORMAT = "anatomist-dashboard/1"
INDEX = "dashboard.json"
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


class Source:
    """What the rows are: tokens (ids [n_seqs, L] + positions [n_rows, 2] + decode) or images [N, H, W] in [0, 1]."""

    def __init__(self, *, tokens: Tensor | None = None, positions: Tensor | None = None,
                 decode: Callable[[int], str] | None = None, images: Tensor | None = None) -> None:
        if (tokens is None) == (images is None):
            raise AnatomistError("a dashboard source is either tokens (with positions and decode) or images")
        if tokens is not None and (positions is None or decode is None):
            raise AnatomistError("token dashboards need the row positions [n_rows, 2] and a decode function")
        self.tokens, self.positions, self.decode, self.images = tokens, positions, decode, images
        self.kind = "tokens" if tokens is not None else "images"

    def context(self, row: int, before: int, acts: list[float | None]) -> list[int]:
        """Token ids of the context around `row` (-1 where the activations say the position is outside)."""
        assert self.tokens is not None and self.positions is not None
        ids = []
        for o, a in enumerate(acts):
            r = row - before + o
            if a is None or not 0 <= r < len(self.positions):
                ids.append(-1)
                continue
            s, p = self.positions[r].tolist()
            ids.append(int(self.tokens[s, p]))
        return ids

    def image(self, row: int) -> list[Any]:
        assert self.images is not None
        img = (self.images[row].float().clamp(0, 1) * 255).round().to(torch.uint8)  # [H, W]
        return [int(img.shape[0]), int(img.shape[1]), base64.b64encode(img.numpy().tobytes()).decode()]


def _example(src: Source, stats: LatentStats, act: float, row: int, ctx: Tensor, tok: dict[int, str],
             images: dict[str, Any]) -> dict[str, Any]:
    acts = [_r(a) for a in ctx.tolist()]
    ex: dict[str, Any] = {"act": _r(act), "row": row}
    if src.kind == "tokens":
        ids = src.context(row, stats.before, acts)
        assert src.decode is not None
        for i in ids:
            if i >= 0 and i not in tok:
                tok[i] = src.decode(i)
        ex.update(ctx=ids, acts=acts)
    else:
        images.setdefault(str(row), src.image(row))
    return ex


def write_dashboard(out: str | Path, stats: LatentStats, src: Source, w_dec: Tensor, *, unembed: Tensor | None = None,
                    decode: Callable[[int], str] | None = None, meta: dict[str, Any] | None = None,
                    chunk_size: int = 128) -> Path:
    """Write `out/dashboard.json` and `out/latents_NNN.json`; returns `out`. `decode` names logit-effect tokens."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    d = stats.d
    n_near = nearest_latents(w_dec)
    effects = logit_effects(w_dec, unembed) if unembed is not None else None
    density = (stats.fires.double() / max(stats.n_rows, 1)).tolist()
    mean = (stats.total / stats.fires.clamp_min(1)).tolist()
    top_text: list[str] = []
    hist = stats.hist.view(d, stats.bins)
    n_chunks = -(-d // chunk_size)
    for c in range(n_chunks):
        tok: dict[int, str] = {}
        images: dict[str, Any] = {}
        latents = []
        for i in range(c * chunk_size, min(d, (c + 1) * chunk_size)):
            top = [_example(src, stats, float(stats.top_val[j, i]), int(stats.top_row[j, i]), stats.top_ctx[j, i],
                            tok, images) for j in range(stats.k) if stats.top_val[j, i] > 0]
            quant = []
            for q in stats.quantile_samples(i, QUANTILES):
                cell = int(q["cell"])
                ex = _example(src, stats, float(stats.s_val[cell]), int(stats.s_row[cell]), stats.s_ctx[cell], tok,
                              images)
                quant.append({"q": q["q"], "lo": _r(float(q["lo"])), "hi": _r(float(q["hi"])), **ex})
            nz = hist[i].nonzero().flatten()
            h = {"first": int(nz[0]), "counts": hist[i, int(nz[0]) : int(nz[-1]) + 1].tolist()} if len(nz) else None
            near = [[int(j), _r(float(v))] for j, v in zip(n_near[0][i], n_near[1][i], strict=True)]
            rec: dict[str, Any] = {"i": i, "top": top, "quantiles": quant, "hist": h, "near": near}
            if effects is not None:
                assert decode is not None
                pid, pv, nid, nv = (t[i].tolist() for t in effects)
                for t in pid + nid:
                    tok.setdefault(int(t), decode(int(t)))
                rec["logits"] = {"pos": [[a, _r(b)] for a, b in zip(pid, pv, strict=True)],
                                 "neg": [[a, _r(b)] for a, b in zip(nid, nv, strict=True)]}
            latents.append(rec)
            centre = [ex["ctx"][stats.before] for ex in top if src.kind == "tokens"]
            top_text.append(" ".join(tok[t] for t, _ in Counter(centre).most_common(5) if t >= 0))
        save_json(out / chunk_name(c), {"format": FORMAT, "chunk": c, "tokens": {str(k): v for k, v in tok.items()},
                                        "images": images, "latents": latents})
    index = {
        "format": FORMAT, "kind": src.kind, "d_sae": d, "n_rows": stats.n_rows, "chunk_size": chunk_size,
        "n_chunks": n_chunks, "window": [stats.before, stats.after], "top_k": stats.k,
        "hist_log10": [stats.lo, stats.hi, stats.bins], "meta": meta or {},
        "latents": {"density": [_r(x) for x in density], "mean": [_r(x) for x in mean],
                    "max": [_r(float(x)) for x in stats.max.tolist()], "top_tokens": top_text},
    }
    save_json(out / INDEX, index)
    return out

