"""Dashboards of a dictionary on a language model (cached activations) or on an image model (top images).

Library functions that write a dashboard folder; the run kind `dashboard` (`anatomist.runs.dashboard`) wraps
`lm_dashboard` with a config, metrics and provenance.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from anatomist.core.errors import AnatomistError
from anatomist.core.paths import cache_dir
from anatomist.data.store import ActivationStore, position_mask
from anatomist.features.base import SparseDictionary
from anatomist.nets.assets import load_model
from anatomist.nets.sites import Site, capture
from anatomist.report.dashboard import Source, dashboard_pass, write_dashboard


def unembedding(model: nn.Module) -> Tensor | None:
    """The unembedding [vocab, d_model], times the final norm's gain when the model has one (Llama: model.norm)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None or not isinstance(getattr(head, "weight", None), Tensor):
        return None
    w = head.weight.detach().float()
    inner = getattr(model, "model", None)
    norm = getattr(inner, "norm", None) if inner is not None else None
    gain = getattr(norm, "weight", None)
    if isinstance(gain, Tensor) and gain.shape == (w.shape[1],):
        w = w * gain.detach().float()
    return w


def store_blocks(store: ActivationStore, site: Site, positions: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
    """(rows [n, d], sequence id of each row [n]) block by block in data order; rows must match `positions`."""
    start = 0
    for i in range(store.n_blocks):
        rows = store.block(i)[site].float()
        seq = positions[start : start + len(rows), 0]
        if len(seq) != len(rows):
            raise AnatomistError(f"activation block {i} has {len(rows)} rows; the tokens give only {len(seq)} more")
        start += len(rows)
        yield rows, seq
    if start != len(positions):
        raise AnatomistError(f"the activations hold {start} rows, the tokens {len(positions)} positions")


def harvested_store(model: nn.Module, tokens: Tensor, site: Site, *, model_name: str, exclude_bos: bool = True,
                    block_seqs: int = 32, cache: str | Path | None = "auto") -> ActivationStore:
    """The activations of `site` over token ids [n_seqs, L], harvested once into an ActivationStore cache ("auto":
    the folder `anatomist sae train` uses for the same tokens; None: none, blocks are computed when read)."""
    args: dict[str, Any] = dict(exclude_bos=exclude_bos, block_seqs=block_seqs, model_name=model_name)
    store = ActivationStore(model, tokens, [site], **args)
    if cache is None:
        return store
    folder = (cache_dir("activations") / f"{model_name}-{site.module}-{store.cache_key()}"
              if cache == "auto" else Path(cache))
    store = ActivationStore(model, tokens, [site], cache=folder, **args)
    store.harvest()
    return store


def lm_dashboard(sae: SparseDictionary, out: str | Path, *, model_name: str, site: str | Site, tokens: Tensor,
                 loaded: Any = None, exclude_bos: bool = True, block_seqs: int = 32, cache: str | Path | None = "auto",
                 **stats_kw: Any) -> dict[str, float]:
    """Dashboard of `sae` reading `site` of a language model over token ids [n_seqs, L]; returns timings.

    The activations are harvested once into an ActivationStore cache (the same folder `anatomist sae train`
    uses for the same tokens), so the pass itself reads from disk; `harvest_s` is 0 when it was cached.
    """
    site = Site.parse(site) if isinstance(site, str) else site
    loaded = loaded or load_model(model_name)
    start = time.perf_counter()
    store = harvested_store(loaded.model, tokens, site, model_name=model_name, exclude_bos=exclude_bos,
                            block_seqs=block_seqs, cache=cache)
    harvest_s = time.perf_counter() - start
    keep = position_mask(tokens, None, None, exclude_bos)
    positions = keep.nonzero() if keep is not None else torch.empty(0, 2, dtype=torch.long)  # [n_rows, 2]
    start = time.perf_counter()
    stats = dashboard_pass(sae.encode, sae.cfg.d_sae, store_blocks(store, site, positions), **stats_kw)
    pass_s = time.perf_counter() - start
    tok = loaded.tokenizer

    def decode(ids: list[int]) -> str:
        return str(tok.decode(ids))

    src = Source(tokens=tokens, positions=positions, decode=decode)
    meta = {"model": model_name, "site": str(site), "n_seqs": len(tokens), "seq_len": tokens.shape[1],
            "arch": sae.cfg.arch, "tokens": stats.n_rows}
    start = time.perf_counter()
    write_dashboard(out, stats, src, sae.W_dec.detach(), unembed=unembedding(loaded.model), meta=meta)
    write_s = time.perf_counter() - start
    return {"harvest_s": harvest_s, "pass_s": pass_s, "write_s": write_s, "rows": float(stats.n_rows)}


@torch.no_grad()
def image_dashboard(sae: SparseDictionary, out: str | Path, *, model: nn.Module, site: str | Site, images: Tensor,
                    model_inputs: Tensor | None = None, batch: int = 500, meta: dict[str, Any] | None = None,
                    **stats_kw: Any) -> Path:
    """Top-activating images of every latent of `sae` reading a [batch, d] site of an image model.

    images [N, 1, H, W] or [N, H, W] in [0, 1] are shown; `model_inputs` (e.g. normalised) are fed to the model.
    """
    site = Site.parse(site) if isinstance(site, str) else site
    inputs = images if model_inputs is None else model_inputs

    def blocks() -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(inputs), batch):
            value = capture(model, inputs[start : start + batch], [site])[site]
            if value.ndim != 2:
                raise AnatomistError(f"site '{site}' gives {list(value.shape)}; image dashboards need [batch, d]")
            yield value.float(), torch.arange(start, start + len(value))  # each image its own "sequence"

    stats = dashboard_pass(sae.encode, sae.cfg.d_sae, blocks(), before=0, after=0, **stats_kw)
    shown = images[:, 0] if images.ndim == 4 else images
    meta = {"site": str(site), **(meta or {})}
    return write_dashboard(out, stats, Source(images=shown), sae.W_dec.detach(), meta=meta)
