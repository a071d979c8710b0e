"""What the interpretation tools read: a dictionary (or a dense basis fitted on the spot), its site, and
corpus text the dictionary did not train on.

A dictionary is named by a folder (anatomist, SAELens or sparsify format) or by `basis:NAME` (neurons, pca, ica,
random: `anatomist.features.bases.fit_basis` on activation rows of the same site), so every tool compares an SAE
with the baselines through one argument.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from anatomist.core.errors import AnatomistError
from anatomist.data.store import position_mask
from anatomist.features import BASES, SparseDictionary, fit_basis, load_sae
from anatomist.features.bases import Basis
from anatomist.nets.sites import Site, capture

BASIS_PREFIX = "basis:"


def basis_name(spec: str) -> str | None:
    """'pca' for 'basis:pca'; None for a dictionary folder; an error for an unknown basis."""
    if not spec.startswith(BASIS_PREFIX):
        return None
    name = spec.removeprefix(BASIS_PREFIX)
    if name not in BASES:
        raise AnatomistError(f"dictionary '{spec}': unknown basis '{name}'; known: {', '.join(BASES)}")
    return name


def open_dictionary(spec: str, site: str | None, rows: Callable[[Site], torch.Tensor],
                    seed: int = 0) -> tuple[SparseDictionary, Site]:
    """(dictionary, site): the dictionary at folder `spec` and the site given or named in its metadata, or the
    basis `basis:NAME` fitted on `rows(site)` (called only then) at the site given."""
    name = basis_name(spec)
    folder = None if name is not None else load_sae(spec).eval()
    where = dictionary_site(spec, folder, site)
    if folder is not None:
        return folder, where
    return fit_baseline(name, rows(where), seed), where  # type: ignore[arg-type]


def fit_baseline(name: Basis, rows: torch.Tensor, seed: int = 0) -> SparseDictionary:
    """`fit_basis` with as many directions as the site is wide, or as the rows allow."""
    return fit_basis(name, rows.float(), seed=seed)


def dictionary_site(spec: str, sae: SparseDictionary | None, site: str | None) -> Site:
    """The site given, else the one the dictionary's metadata names (what `anatomist sae train` saves)."""
    if site:
        return Site.parse(site)
    named = (sae.metadata.get("site") or sae.metadata.get("hook_name")) if sae is not None else None
    if not named:
        raise AnatomistError(f"dictionary '{spec}': its metadata names no site; give the site (e.g. model.layers.6)")
    return Site.parse(str(named))


@torch.no_grad()
def site_rows(model: nn.Module, ids: torch.Tensor, site: Site, *, batch_size: int = 8,
              exclude_bos: bool = True) -> torch.Tensor:
    """Activation rows [n, d] at `site` for every kept position of token ids [n_seqs, L], row-major."""
    rows = []
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size]
        value = capture(model, batch, [site])[site].float()
        keep = position_mask(batch, None, None, exclude_bos)
        rows.append(value[keep] if keep is not None else value.reshape(-1, value.shape[-1]))
    return torch.cat(rows)


def check_width(sae: SparseDictionary, rows: torch.Tensor, site: Site) -> None:
    if sae.cfg.d_in != rows.shape[-1]:
        raise AnatomistError(f"dictionary has d_in {sae.cfg.d_in} but site '{site}' has width {rows.shape[-1]}")
