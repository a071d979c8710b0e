"""Exact reparameterisations of SmolLM2 (`anatomist.stress.llama`) keep its logits to < 1e-5 (relative).

One float64 copy of the model, a few short sequences: the reference logits first, then each reparameterisation
applied in place on top of the previous ones (they compose), the logits compared after each.
"""

from __future__ import annotations

import copy

import pytest
import torch

from anatomist.core.errors import AnatomistError
from anatomist.stress.llama import fold_rmsnorm, haar_orthogonal, permute_rescale_mlp, rotate_residual, split_unit

TOL = 1e-5


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


@pytest.mark.usefixtures("one_thread")
def test_smollm2_reparameterisations_keep_the_logits(smollm2) -> None:
    ids = smollm2.tokenizer(["The cat sat on the mat because", "Paris is the capital of"], return_tensors="pt",
                            padding=True).input_ids[:, :8]
    model = copy.deepcopy(smollm2.model).double().eval()
    with torch.no_grad():
        reference = model(ids).logits
        steps = {
            "fold_rmsnorm": lambda: fold_rmsnorm(model),
            "rotate_residual": lambda: rotate_residual(model, haar_orthogonal(model.config.hidden_size, 0)),
            "permute_rescale_mlp": lambda: permute_rescale_mlp(model, seed=1),
            "split_unit": lambda: split_unit(model, layer=3, unit=17, alpha=0.3),
        }
        for name, apply in steps.items():
            apply()
            change = _relative(reference, model(ids).logits)
            assert change < TOL, f"{name}: logits changed by {change:.2e}"
    # the reparameterisation really moved the weights: the embedding is no longer the original one
    emb = smollm2.model.get_input_embeddings().weight.double()
    assert _relative(emb, model.get_input_embeddings().weight) > 0.5
    assert model.model.layers[3].mlp.up_proj.out_features == smollm2.model.config.intermediate_size + 1


def test_rotation_without_folding_is_refused(tiny_lm) -> None:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_lm)
    with torch.no_grad():
        model.model.norm.weight.mul_(2.0)
    with pytest.raises(AnatomistError, match="fold the RMSNorm"):
        rotate_residual(model, haar_orthogonal(model.config.hidden_size, 0))


def test_unfolded_rotation_would_change_the_logits(tiny_lm) -> None:
    """The control: rotating without folding the gains (forced past the check) does change the function."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_lm).double().eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight.copy_(torch.linspace(0.5, 2.0, model.config.hidden_size))
        ids = torch.tensor([[1, 5, 9, 13, 2]])
        before = model(ids).logits
        folded = fold_rmsnorm(copy.deepcopy(model))
        rotate_residual(folded, haar_orthogonal(model.config.hidden_size, 0))
        assert _relative(before, folded(ids).logits) < TOL
        gains = [layer.input_layernorm.weight.clone() for layer in model.model.layers]
        for layer in model.model.layers:  # pretend the gains were 1 (past the check), rotate, put them back
            layer.input_layernorm.weight.fill_(1.0)
        rotate_residual(model, haar_orthogonal(model.config.hidden_size, 0))
        for layer, gain in zip(model.model.layers, gains, strict=True):
            layer.input_layernorm.weight.copy_(gain)
        assert _relative(before, model(ids).logits) > 1e-3
