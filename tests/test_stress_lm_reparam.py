"""Robustness measured on a language model (`anatomist.stress.lm_reparam`): a decomposition fitted on a model and on
an exactly reparameterised copy, matched after mapping back. PCA is basis-free and matches across; the residual
stream's axes are not and do not (while each matches itself across seeds)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from anatomist.stress.lm_reparam import back_to_a, pair_rows, reparam_match, reparameterised_pair

pytestmark = pytest.mark.usefixtures("one_thread")
SETTINGS = {"d_sae": 32, "k": 4, "steps": 30, "batch_size": 64}


@pytest.fixture(scope="module")
def pair(tiny_lm: Path) -> tuple:
    model = LlamaForCausalLM.from_pretrained(tiny_lm).eval()
    ids = torch.randint(10, 5000, (6, 24), generator=torch.Generator().manual_seed(0))
    a, b, rotation = reparameterised_pair(model, seed=1)
    return a, b, rotation, ids


def test_the_reparameterised_copy_is_the_rotated_model(pair: tuple) -> None:
    a, b, rotation, ids = pair
    rows = pair_rows(a, b, rotation, ids, "model.layers.1")
    assert torch.allclose(rows.b, rows.a @ rotation.T, atol=1e-4)  # B's residual stream is R times A's
    assert torch.allclose(back_to_a(rows.b, rotation), rows.a, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(a(ids).logits, b(ids).logits, atol=1e-4)


def test_pca_survives_the_rotation_and_the_residual_axes_do_not(pair: tuple) -> None:
    a, b, rotation, ids = pair
    rows = pair_rows(a, b, rotation, ids, "model.layers.1")
    pca = reparam_match("pca", rows, SETTINGS)
    axes = reparam_match("neurons", rows, SETTINGS)
    assert pca["reparam_mmcs"] > 0.99 and pca["reparam_control"] > 0.99
    assert axes["reparam_control"] == pytest.approx(1.0) and axes["reparam_mmcs"] < 0.8


def test_dictionaries_and_transcoders_are_matched_against_their_seed_control(pair: tuple) -> None:
    a, b, rotation, ids = pair
    sae = reparam_match("sae_topk", pair_rows(a, b, rotation, ids, "model.layers.1"), SETTINGS)
    tc_rows = pair_rows(a, b, rotation, ids, "model.layers.1.mlp:input", "model.layers.1.mlp:output")
    assert tc_rows.a_target is not None and torch.allclose(tc_rows.b_target, tc_rows.a_target @ rotation.T,
                                                           atol=1e-4)
    tc = reparam_match("transcoder", tc_rows, SETTINGS)
    for got in (sae, tc):
        assert 0 < got["reparam_mmcs"] <= 1 and 0 < got["reparam_control"] <= 1
