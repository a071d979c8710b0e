"""Folders as the real dictionary_learning package writes them (ae.pt + config.json) load in anatomist and compute
the same codes and reconstructions as its own classes."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from anatomist.core.errors import AnatomistError
from anatomist.features import load_sae

pytestmark = pytest.mark.peers
# its package __init__ imports an activation buffer built on nnsight; the dictionary classes never use nnsight
sys.modules.setdefault("nnsight", types.SimpleNamespace(LanguageModel=object))  # type: ignore[arg-type]
dictionary = pytest.importorskip("dictionary_learning.dictionary")
top_k = pytest.importorskip("dictionary_learning.trainers.top_k")
batch_top_k = pytest.importorskip("dictionary_learning.trainers.batch_top_k")


def _perturbed(module: nn.Module) -> nn.Module:
    """Their fresh dictionary with every parameter moved off its initial value (biases start at zero)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module


def _save(module: nn.Module, folder: Path, dict_class: str, **trainer: object) -> Path:
    """What their training loop writes: config.json {"trainer": {...}} and ae.pt = torch.save(state_dict)."""
    folder.mkdir(parents=True)
    config = {"trainer": {"dict_class": dict_class, "lm_name": "tiny", "layer": 2,
                          "submodule_name": "resid_post_layer_2", **trainer}}
    (folder / "config.json").write_text(json.dumps(config))
    torch.save(module.state_dict(), folder / "ae.pt")
    return folder


@pytest.mark.parametrize("kind", ["AutoEncoder", "AutoEncoderTopK", "BatchTopKSAE", "JumpReluAutoEncoder"])
def test_dictionary_learning_folder_loads_with_same_outputs(tmp_path: Path, kind: str) -> None:
    d, f = 16, 64
    theirs = {"AutoEncoder": lambda: dictionary.AutoEncoder(d, f),
              "AutoEncoderTopK": lambda: top_k.AutoEncoderTopK(d, f, k=6),
              "BatchTopKSAE": lambda: batch_top_k.BatchTopKSAE(d, f, k=6),
              "JumpReluAutoEncoder": lambda: dictionary.JumpReluAutoEncoder(d, f)}[kind]()
    _perturbed(theirs)
    if kind == "BatchTopKSAE":
        theirs.threshold.fill_(0.2)  # set by training from the smallest kept activations
    if kind == "JumpReluAutoEncoder":
        with torch.no_grad():
            theirs.threshold.copy_(torch.rand(f) * 0.3)
    ours = load_sae(_save(theirs, tmp_path / kind, kind, activation_dim=d, dict_size=f))
    x = torch.randn(32, d)
    with torch.no_grad():
        codes = theirs.encode(x)
        torch.testing.assert_close(ours.encode(x), codes, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x), theirs.decode(codes), rtol=1e-5, atol=1e-5)
    assert ours.metadata["model_name"] == "tiny" and ours.metadata["source_format"] == "dictionary_learning"


def test_unsupported_classes_and_pickles_are_refused(tmp_path: Path) -> None:
    gated = _perturbed(dictionary.GatedAutoEncoder(8, 16))
    with pytest.raises(AnatomistError, match="class 'GatedAutoEncoder' is not supported"):
        load_sae(_save(gated, tmp_path / "gated", "GatedAutoEncoder"))
    folder = _save(dictionary.AutoEncoder(8, 16), tmp_path / "pickle", "AutoEncoder")
    torch.save({"ae": types.SimpleNamespace(x=1)}, folder / "ae.pt")  # an object, not tensors: never unpickled
    with pytest.raises(AnatomistError, match="ae.pt: not a weights-only state dict"):
        load_sae(folder)
