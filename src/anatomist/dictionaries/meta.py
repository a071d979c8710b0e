"""Meta-SAEs (Bussmann et al., "Showing SAE latents are not atomic using meta-SAEs").

A BatchTopK SAE with a small k is trained on the unit-norm decoder rows of another SAE (the *base*).
Each base latent's row is then written as a sparse combination of meta-latents: if the base latent
"Einstein" decomposes into meta-latents shared with "physicist" and "German" latents, it was not atomic.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from anatomist.core import AnatomistError, Config
from anatomist.dictionaries.fit import fit_rows
from anatomist.features.base import SAEConfig, SparseDictionary


class MetaConfig(Config):
    """The meta-SAE and how it is trained."""

    d_meta: int = Field(gt=0, description="meta-latents")
    k: int = Field(4, gt=0, description="BatchTopK: mean active meta-latents per base latent")
    steps: int = Field(2000, gt=0, description="Adam steps")
    batch_size: int = Field(1024, gt=0, description="decoder rows per step (capped at the number of rows)")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    seed: int = Field(0, description="seed of the init and the row order")


def decoder_rows(sae: SparseDictionary) -> Tensor:
    """The base dictionary's decoder rows at unit norm [F, d]."""
    w = sae.W_dec.detach().float()
    return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def train_meta_sae(base: SparseDictionary, cfg: MetaConfig) -> SparseDictionary:
    """A BatchTopK meta-SAE fitted to `base`'s unit decoder rows."""
    rows = decoder_rows(base)
    if cfg.k > cfg.d_meta:
        raise AnatomistError(f"meta-SAE: k={cfg.k} is larger than d_meta={cfg.d_meta}")
    sae_cfg = SAEConfig.parse({"arch": "batchtopk", "d_in": rows.shape[1], "d_sae": cfg.d_meta, "k": cfg.k})
    # a seed of its own: the base SAE was most likely initialised from the same small seed (0), and a
    # meta-SAE drawn from that random stream would start with meta-latent j = base latent j's initial row
    seed = int.from_bytes(hashlib.sha256(f"meta-sae/{cfg.seed}".encode()).digest()[:4], "little")
    return fit_rows(rows, sae_cfg, steps=cfg.steps, batch_size=min(cfg.batch_size, len(rows)), lr=cfg.lr,
                    seed=seed)


@dataclass
class MetaDecomposition:
    """Base latents written in meta-latents: codes [F, M] (row i: latent i's meta-code)."""

    codes: Tensor  # [F, M]
    explained_variance: float  # of the unit decoder rows, by the meta-SAE's reconstruction
    mean_l0: float  # active meta-latents per base latent

    def summary(self) -> dict[str, Any]:
        uses = (self.codes != 0).sum(0)  # [M] base latents using each meta-latent
        return {
            "explained_variance": self.explained_variance,
            "fvu": 1 - self.explained_variance,
            "mean_l0": self.mean_l0,
            "n_base": int(self.codes.shape[0]),
            "n_meta": int(self.codes.shape[1]),
            "dead_meta_fraction": float((uses == 0).float().mean()),
            "median_base_latents_per_meta": float(uses.float().median()),
        }

    def explain(self, latent: int, n_shared: int = 5) -> list[dict[str, Any]]:
        """Latent `latent`'s meta-latents (strongest first), each with the other base latents using it most."""
        if not 0 <= latent < len(self.codes):
            raise AnatomistError(f"latent {latent} is out of range (the base SAE has {len(self.codes)} latents)")
        row = self.codes[latent]
        out = []
        for j in row.nonzero().flatten()[row[row != 0].argsort(descending=True)].tolist():
            col = self.codes[:, j].clone()
            col[latent] = 0
            top = col.argsort(descending=True)[:n_shared]
            shared = [int(i) for i in top if col[i] > 0]
            out.append({"meta_latent": j, "weight": float(row[j]), "n_users": int((self.codes[:, j] != 0).sum()),
                        "shared_with": shared})
        return out


def decompose(base: SparseDictionary, meta: SparseDictionary) -> MetaDecomposition:
    """Encode `base`'s unit decoder rows with `meta`; the share of their variance it explains."""
    rows = decoder_rows(base)
    with torch.no_grad():
        codes = meta.encode(rows)  # [F, M]
        recon = meta.decode(codes)
    var = float((rows - rows.mean(0)).pow(2).sum())
    ev = 1 - float((recon - rows).pow(2).sum()) / var
    return MetaDecomposition(codes, ev, float((codes != 0).sum(-1).float().mean()))

