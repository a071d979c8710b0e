"""Stitching: planted dictionaries whose novel latents and groups are known."""

from __future__ import annotations

import pytest
import torch

from anatomist.dictionaries.stitching import (
    StitchConfig,
    StitchedSAE,
    insertion_effects,
    match_latents,
    stitch_path,
)
from anatomist.features import SAEConfig, make_sae

D, N_TRUE = 32, 24


def planted(directions: torch.Tensor) -> torch.nn.Module:
    """A ReLU SAE that reads and writes exactly these (orthonormal) directions."""
    sae = make_sae(SAEConfig(arch="relu", d_in=D, d_sae=len(directions)))
    w = {"W_enc": directions.T.clone(), "b_enc": torch.zeros(len(directions)), "W_dec": directions.clone(),
         "b_dec": torch.zeros(D)}
    sae.import_weights(w)
    return sae


@pytest.fixture(scope="module")
def setup() -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(D, D, generator=g))[0][:N_TRUE]  # [24, 32] orthonormal true features
    small = planted(basis[:16])  # knows features 0..15
    # the large SAE knows all 24; feature 3 is split into two latents (cos 0.8 each), the rest are rotated
    # (cos ~0.87 with noise of norm ~0.57), and its rows are shuffled so that position says nothing
    rows = [basis[i] for i in range(N_TRUE) if i != 3]
    perp = torch.randn(D, generator=g)
    perp = perp - (perp @ basis.T) @ basis  # a direction outside every true feature
    perp = perp / perp.norm()
    rows += [0.8 * basis[3] + 0.6 * perp, 0.8 * basis[3] - 0.6 * perp]
    rows = [r + 0.1 * torch.randn(D, generator=g) * (i < len(rows) - 2) for i, r in enumerate(rows)]
    rows = [r / r.norm() for r in rows]
    perm = torch.randperm(len(rows), generator=g)
    W = torch.stack(rows)[perm]
    large = make_sae(SAEConfig(arch="relu", d_in=D, d_sae=len(rows)))
    large.import_weights({"W_enc": W.T.clone(), "b_enc": torch.zeros(len(rows)), "W_dec": W.clone(),
                          "b_dec": torch.zeros(D)})
    # ground truth: which large latents are the planted novel ones (features 16..23)
    origin = torch.tensor([i for i in range(N_TRUE) if i != 3] + [3, 3])[perm]
    x = torch.rand(2000, N_TRUE, generator=g) * (torch.rand(2000, N_TRUE, generator=g) < 0.2) @ basis
    return small, large, x, origin


def test_novel_latents_are_the_planted_ones(setup) -> None:  # type: ignore[no-untyped-def]
    small, large, _, origin = setup
    m = match_latents(small, large, threshold=0.7)
    assert sorted(m.novel.tolist()) == sorted((origin >= 16).nonzero().flatten().tolist())
    assert len(m.unmatched_small) == 0
    # 15 one-to-one groups plus one group where small latent 3 matches both halves of the split
    sizes = sorted((len(s), len(l)) for s, l in m.groups)
    assert sizes == [(1, 1)] * 15 + [(1, 2)]
    for s, l in m.groups:
        assert set(origin[l].tolist()) == set(s.tolist())  # each group pairs a feature with its own copies


def test_path_runs_from_small_to_large_and_novel_latents_lower_mse(setup) -> None:  # type: ignore[no-untyped-def]
    small, large, x, _ = setup
    r = stitch_path(small, large, x, StitchConfig(threshold=0.7, novel_points=8, swap_points=4))
    assert r["n_novel"] == 8 and r["novel_fraction"] == pytest.approx(8 / 25)
    path = r["path"]
    assert path[0]["mse"] == pytest.approx(r["mse_small"]) and path[-1]["mse"] == pytest.approx(r["mse_large"])
    novel = [p["mse"] for p in path if p["n_groups_swapped"] == 0]
    assert all(b < a for a, b in zip(novel, novel[1:], strict=False))  # each batch of novel latents helps
    # small sees 16/24 features exactly: its MSE is the energy of the other 8
    w = small.W_dec.detach()
    assert r["mse_small"] == pytest.approx(float((x @ torch.linalg.pinv(w) @ w - x)
                                                 .pow(2).sum(-1).mean()), rel=1e-4)
    assert r["novel_mse_drop"] > 0.5 * r["mse_small"]
    # each planted novel latent helps when inserted alone, each copy of a known feature hurts (double counting)
    assert r["novel_helps_alone_fraction"] == 1.0 and r["reconstruction_helps_alone_fraction"] == 0.0
    assert r["cosine_auc"] == 1.0


def test_insertion_effects_match_brute_force(setup) -> None:  # type: ignore[no-untyped-def]
    small, large, x, _ = setup
    delta = insertion_effects(small, large, x)
    with torch.no_grad():
        base = float((small(x) - x).pow(2).sum(-1).mean())
    for j in (0, 7, 19):
        keep = torch.zeros(25, dtype=torch.bool)
        keep[j] = True
        st = StitchedSAE(small, large, torch.ones(16, dtype=torch.bool), keep)
        with torch.no_grad():
            brute = float((st.decode(st.encode(x)) - x).pow(2).sum(-1).mean()) - base
        assert float(delta[j]) == pytest.approx(brute, rel=1e-3, abs=1e-5)


def test_stitched_sae_endpoints_equal_the_originals(setup) -> None:  # type: ignore[no-untyped-def]
    small, large, x, _ = setup
    s = StitchedSAE(small, large, torch.ones(16, dtype=torch.bool), torch.zeros(25, dtype=torch.bool))
    l_ = StitchedSAE(small, large, torch.zeros(16, dtype=torch.bool), torch.ones(25, dtype=torch.bool))
    with torch.no_grad():
        assert torch.allclose(s.decode(s.encode(x)), small(x), atol=1e-5)
        assert torch.allclose(l_.decode(l_.encode(x)), large(x), atol=1e-5)
