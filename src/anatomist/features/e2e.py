"""End-to-end objectives (Braun et al.): the SAE spliced into the frozen model, trained on the output distribution.

Per step, on a batch of token sequences [b, seq]:
  clean pass (no grad):  the model's logits and, for e2e+ds, the downstream sites' values
  spliced pass:          the site replaced by the SAE's reconstruction, gradients flowing into the SAE only
  the loss terms of `anatomist.features.objectives` read the values both passes give (`StepValues`)

Both passes start from the site's clean activations (read from the activation cache, or one forward that stops
at the site). When the site is the output of block l of a layer list (`model.layers.6`), blocks 0..l are skipped in
both passes: they pass their input through and the site's value is spliced in, so a step costs the layers after
the site only. That shortcut is checked once against a full forward (`suffix_is_exact`) and dropped for models it
does not fit.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from anatomist.core.errors import AnatomistError
from anatomist.data.store import position_mask, seeded_generator
from anatomist.features.base import SparseDictionary
from anatomist.features.objectives import StepValues
from anatomist.nets.sites import Site, get_module, primary, replace_forward, run_model, splice


def _block_of(model: nn.Module, site: Site) -> tuple[nn.ModuleList, int] | None:
    """(layer list, index) when `site` is the output of a block in a ModuleList, else None."""
    m = re.fullmatch(r"(.*)\.(\d+)", site.module)
    if site.where != "output" or m is None:
        return None
    layers = get_module(model, m.group(1))
    return (layers, int(m.group(2))) if isinstance(layers, nn.ModuleList) else None


def downstream_sites(model: nn.Module, site: Site) -> list[Site]:
    """The outputs of every block after the site's block in its layer list."""
    found = _block_of(model, site)
    if found is None:
        raise AnatomistError(
            f"e2e+ds: cannot infer downstream sites from '{site}' (not the output of a block in a layer list); "
            "set downstream_sites"
        )
    layers, l = found
    path = site.module.rsplit(".", 1)[0]
    return [Site(f"{path}.{i}") for i in range(l + 1, len(layers))]


def _passthrough(*args: Any, **kwargs: Any) -> Any:
    return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def skip_to(model: nn.Module, site: Site, enabled: bool = True) -> Iterator[None]:
    """Blocks 0..l of the site's layer list pass their input through (the site's value is spliced in anyway)."""
    found = _block_of(model, site) if enabled else None
    layers = site.module.rsplit(".", 1)[0]
    blocks = [f"{layers}.{i}" for i in range(found[1] + 1)] if found is not None else []
    with replace_forward(model, dict.fromkeys(blocks, _passthrough)):
        yield


@torch.no_grad()
def suffix_is_exact(model: nn.Module, ids: torch.Tensor, site: Site, value: torch.Tensor) -> bool:
    """Does skipping to `site` and splicing its clean `value` give the full forward's output?"""
    if _block_of(model, site) is None:
        return False
    full = primary(run_model(model, ids))
    try:
        with skip_to(model, site), splice(model, {site: lambda v: value}):
            short = primary(run_model(model, ids))
    except (AnatomistError, RuntimeError, TypeError, ValueError, IndexError, KeyError):
        return False
    return short.shape == full.shape and torch.allclose(short, full, rtol=1e-4, atol=1e-4)


class SequenceBatches:
    """Seeded, resumable shuffled batches of sequence indices (e2e objectives train on whole sequences)."""

    def __init__(self, n: int, batch: int, seed: int):
        self.n, self.batch, self.seed = n, batch, seed
        self.pos = {"epoch": 0, "batch": 0}

    def state_dict(self) -> dict[str, int]:
        return dict(self.pos)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.pos = {"epoch": int(state["epoch"]), "batch": int(state["batch"])}

    def __iter__(self) -> Iterator[torch.Tensor]:
        if self.n < self.batch:
            raise AnatomistError(f"e2e training needs at least batch_seqs={self.batch} sequences, got {self.n}")
        while True:
            order = torch.randperm(self.n, generator=seeded_generator(self.seed, self.pos["epoch"]))
            for b in range(self.pos["batch"], self.n // self.batch):
                self.pos["batch"] = b + 1
                yield order[b * self.batch : (b + 1) * self.batch]
            self.pos = {"epoch": self.pos["epoch"] + 1, "batch": 0}


def _stash_to(store: dict[Site, torch.Tensor], site: Site, detach: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    def keep(value: torch.Tensor) -> torch.Tensor:
        store[site] = value.detach() if detach else value
        return value

    return keep


def e2e_step(
    sae: SparseDictionary,
    model: nn.Module,
    ids: torch.Tensor,
    a: torch.Tensor,
    site: Site,
    ds_sites: list[Site],
    *,
    scale: float,
    exclude_bos: bool,
    skip: bool,
) -> StepValues:
    """Both passes of one e2e(+ds) step on ids [b, seq] whose clean site values are a [b, seq, d].

    Returns what the loss terms read: clean and spliced logits, downstream values, the SAE's TrainOutput.
    """
    keep = position_mask(ids, None, None, exclude_bos)
    with torch.no_grad(), skip_to(model, site, skip):
        clean_acts: dict[Site, torch.Tensor] = {}
        fns: dict[Site | str, Callable[[torch.Tensor], torch.Tensor]] = {site: lambda v: a}
        fns.update({s: _stash_to(clean_acts, s, detach=True) for s in ds_sites})
        with splice(model, fns):
            clean_logits = primary(run_model(model, ids))
    rows = a[keep] if keep is not None else a.reshape(-1, a.shape[-1])  # [n, d]
    out = sae.train_forward(rows * scale)
    if keep is not None:  # the reconstruction at kept positions, the clean value (BOS) elsewhere
        recon = a.masked_scatter(keep[..., None].expand_as(a), out.recon / scale)
    else:
        recon = (out.recon / scale).reshape(a.shape)
    spliced_acts: dict[Site, torch.Tensor] = {}
    fns = {site: lambda v: recon}
    fns.update({s: _stash_to(spliced_acts, s, detach=False) for s in ds_sites})
    with skip_to(model, site, skip), splice(model, fns):
        logits = primary(run_model(model, ids))
    # KL at every position, the last one included (e2e_sae does the same): matching the clean next-token
    # distribution needs no next token. Positions the SAE leaves clean (BOS) have KL 0 and are not counted.
    counted = keep if keep is not None else torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        x = rows * scale
        fvu = float((x - out.recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    return StepValues(out, clean_logits=clean_logits, logits=logits, counted=counted,
                      clean_downstream=clean_acts, spliced_downstream=spliced_acts, keep=keep,
                      logged={"fvu": fvu})
