"""Dense bases of a site, the baselines a sparse dictionary is compared against (Cunningham et al.).

A basis is a dictionary with no nonlinearity, `encode(x) = (x - b_dec) @ W_enc`, `decode(c) = c @ W_dec + b_dec`,
so every tool that takes a dictionary (autointerp, feature patching, evaluation, saving) takes a basis too:

- neurons: the site's own coordinates (W_enc = W_dec = I, no centring);
- pca: the top principal directions of the rows (centred on their mean), by explained variance;
- ica: FastICA's independent directions (centred, whitened), each decoder row rescaled to unit norm and its
  encoder column by the inverse, so codes and reconstruction are unchanged;
- random: a uniformly random orthonormal basis (centred), the "any direction" control.

With as many directions as the site is wide each basis reconstructs exactly; with fewer, pca keeps the most variance.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field
from sklearn.decomposition import FastICA
from torch import Tensor

from anatomist.core import AnatomistError
from anatomist.features.base import SAEConfig, SparseDictionary, TrainOutput, register

Basis = Literal["neurons", "pca", "ica", "random"]
BASES: tuple[Basis, ...] = ("neurons", "pca", "ica", "random")


class LinearConfig(SAEConfig):
    """A dense basis of the site (no nonlinearity): neurons, PCA, ICA or random directions, fitted, not trained."""

    arch: Literal["linear"] = "linear"
    basis: Basis = Field("pca", description="how the directions were found: neurons, pca, ica or random")


@register(LinearConfig)
class LinearBasis(SparseDictionary):
    cfg: LinearConfig

    def activation(self, pre: Tensor) -> Tensor:
        return pre  # a basis has signed coordinates: every direction is "active" on every input

    def train_forward(self, x: Tensor, target: Tensor | None = None, dead_mask: Tensor | None = None) -> TrainOutput:
        target = self._target(x, target)
        acts = self.encode(x)
        recon = self.decode(acts)
        zero = recon.new_zeros(())
        return TrainOutput(recon, acts, (acts != 0).reshape(-1, acts.shape[-1]).any(0), zero, zero)


def _basis(kind: Basis, d_in: int, n: int, w_enc: Tensor, w_dec: Tensor, mean: Tensor) -> LinearBasis:
    cfg = LinearConfig.parse({"d_in": d_in, "d_sae": n, "basis": kind, "normalize_decoder": False,
                              "apply_b_dec_to_input": True})
    basis = LinearBasis(cfg)
    with torch.no_grad():
        basis.import_weights({"W_enc": w_enc, "b_enc": torch.zeros(n), "W_dec": w_dec, "b_dec": mean},
                             source=f"{kind} basis")
    return basis.eval()


def fit_basis(kind: Basis, rows: Tensor, n: int | None = None, seed: int = 0) -> LinearBasis:
    """A `kind` basis of `n` directions fitted on activation rows [N, d_in]; default: the site's width (PCA and
    ICA: at most N and N - 1, what the rows can define)."""
    if rows.ndim != 2:
        raise AnatomistError(f"fit_basis: rows have shape {list(rows.shape)}; need [n_rows, d_in]")
    d_in = rows.shape[1]
    # PCA has no direction past the rows' rank, and FastICA needs more rows than directions
    most = {"pca": min(d_in, len(rows)), "ica": min(d_in, len(rows) - 1)}.get(kind, d_in)
    n = most if n is None else n
    if not 0 < n <= most:
        raise AnatomistError(f"fit_basis: {n} {kind} directions from {len(rows)} rows of width {d_in}; "
                             f"need 1..{most}")
    x = rows.double()
    mean = x.mean(0)
    if kind == "neurons":
        eye = torch.eye(d_in, dtype=torch.float64)[:, :n]  # the first n coordinates
        return _basis(kind, d_in, n, eye.float(), eye.T.float(), torch.zeros(d_in))
    if kind == "pca":
        _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)  # rows of vh: directions by singular value
        v = vh[:n]  # [n, d_in]
        return _basis(kind, d_in, n, v.T.float(), v.float(), mean.float())
    if kind == "random":
        gen = torch.Generator().manual_seed(seed)
        q, r = torch.linalg.qr(torch.randn(d_in, d_in, generator=gen, dtype=torch.float64))
        q = q * torch.sign(torch.diagonal(r))  # Haar-uniform (Mezzadri): fix QR's sign convention
        v = q.T[:n]
        return _basis(kind, d_in, n, v.T.float(), v.float(), mean.float())
    if kind == "ica":
        ica = FastICA(n_components=n, whiten="unit-variance", random_state=seed, max_iter=1000, tol=1e-4)
        ica.fit(x.numpy())
        unmix = torch.from_numpy(np.asarray(ica.components_))  # [n, d_in]: sources = (x - mean) @ unmix.T
        mix = torch.from_numpy(np.asarray(ica.mixing_)).T  # [n, d_in]: x = sources @ mix + mean
        norms = mix.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return _basis(kind, d_in, n, (unmix * norms).T.float(), (mix / norms).float(),
                      torch.from_numpy(np.asarray(ica.mean_)).float())
    raise AnatomistError(f"fit_basis: unknown basis '{kind}'; known: {list(BASES)}")
