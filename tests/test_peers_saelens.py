"""Round trips through the real sae_lens package: our SAELens files load in sae_lens and compute the same
activations and reconstructions; files sae_lens writes load in anatomist with the same outputs."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from anatomist.features import SAEConfig, SparseDictionary, load_sae, make_sae, save_sae

pytestmark = pytest.mark.peers
sae_lens = pytest.importorskip("sae_lens")


def _perturbed(sae: torch.nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))


def _compare(ours: SparseDictionary, theirs: Any, d_in: int) -> None:
    x = torch.randn(128, d_in)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), rtol=1e-5, atol=1e-5)
        acts = ours.encode(x)
        torch.testing.assert_close(ours.decode(acts), theirs.decode(acts), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("arch", "d_out", "expected"),
    [
        ("relu", None, "standard"),
        ("relu-tied", None, "standard"),
        ("topk", None, "topk"),
        ("jumprelu", None, "jumprelu"),
        ("batchtopk", None, "jumprelu"),
        ("relu", 10, "transcoder"),
        ("jumprelu", 10, "jumprelu_transcoder"),
    ],
)
def test_ours_load_in_saelens(tmp_path: Path, arch: str, d_out: int | None, expected: str) -> None:
    ours = make_sae(SAEConfig(arch=arch, d_in=16, d_sae=64, d_out=d_out, **({"k": 6} if "topk" in arch else {})))
    _perturbed(ours, 0)
    if arch == "batchtopk":
        ours.threshold.fill_(0.05)
    if arch == "jumprelu":  # thresholds are never negative (training clamps them at 0)
        with torch.no_grad():
            ours.threshold.abs_()
    save_sae(ours, tmp_path / "sl", format="saelens", metadata={"model_name": "smollm2", "site": "model.layers.3"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = sae_lens.SAE.load_from_disk(tmp_path / "sl")
    assert theirs.cfg.architecture() == expected
    assert theirs.cfg.metadata.model_name == "smollm2" and theirs.cfg.metadata.hook_name == "model.layers.3"
    _compare(ours, theirs, 16)


def _saelens_models() -> dict[str, Any]:
    sl = sae_lens
    return {
        "standard": sl.StandardSAE(sl.StandardSAEConfig(d_in=16, d_sae=64)),
        "topk": sl.TopKSAE(sl.TopKSAEConfig(d_in=16, d_sae=64, k=6)),
        "topk-rescaled": sl.TopKSAE(sl.TopKSAEConfig(d_in=16, d_sae=64, k=6, rescale_acts_by_decoder_norm=True)),
        "jumprelu": sl.JumpReLUSAE(sl.JumpReLUSAEConfig(d_in=16, d_sae=64)),
        "jumprelu-uncentred": sl.JumpReLUSAE(sl.JumpReLUSAEConfig(d_in=16, d_sae=64, apply_b_dec_to_input=False)),
        "transcoder": sl.Transcoder(sl.TranscoderConfig(d_in=16, d_sae=64, d_out=10, apply_b_dec_to_input=False)),
    }


@pytest.mark.parametrize("name", list(_saelens_models()))
def test_saelens_files_load_in_anatomist(tmp_path: Path, name: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = _saelens_models()[name]
        _perturbed(theirs, 1)
        if hasattr(theirs, "threshold"):
            with torch.no_grad():
                theirs.threshold.copy_(0.05 + 0.1 * torch.rand(64))
        theirs.save_model(tmp_path / name)
    ours = load_sae(tmp_path / name)
    assert ours.metadata["source_format"] == "saelens"
    _compare(ours, theirs, 16)
