"""Folders written by the real sparsify package load in anatomist and compute the same codes and outputs."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch

from anatomist.features import load_sae

pytestmark = pytest.mark.peers
with contextlib.redirect_stdout(io.StringIO()):  # sparsify prints which decoder it picked on import
    sparsify = pytest.importorskip("sparsify")


@pytest.mark.parametrize("transcode", [False, True])
def test_sparsify_folder_loads_with_same_outputs(tmp_path: Path, transcode: bool) -> None:
    torch.manual_seed(0)
    theirs = sparsify.SparseCoder(16, sparsify.SparseCoderConfig(num_latents=64, k=6, transcode=transcode))
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    theirs.save_to_disk(tmp_path / "layers.2")
    ours = load_sae(tmp_path / "layers.2")
    assert ours.cfg.arch == "topk" and ours.cfg.k == 6 and ours.cfg.is_transcoder == transcode
    x = torch.randn(64, 16)
    with torch.no_grad():
        out = theirs(x)
        dense = torch.zeros(64, 64).scatter(-1, out.latent_indices, out.latent_acts)
        torch.testing.assert_close(ours.encode(x), dense, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x), out.sae_out, rtol=1e-5, atol=1e-5)
