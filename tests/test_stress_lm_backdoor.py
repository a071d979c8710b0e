"""The language-model backdoor (`anatomist.stress.lm_backdoor`): poisoning puts the trigger where it says and
relabels what follows; a tiny Llama fine-tuned on poisoned rows learns the trigger while its clean-only control does
not; the lenses refuse data that hold the trigger (it must be absent from what they are fitted on)."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from anatomist.core.errors import AnatomistError
from anatomist.nets.sites import Site
from anatomist.stress.lm_backdoor import (
    LensData,
    attack_success,
    decoy,
    default_backdoor,
    fine_tune,
    has_trigger,
    lens_verdicts,
    poison,
)

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB = 40


def _rows(n: int, seed: int) -> torch.Tensor:  # random text over the vocabulary, the trigger's tokens left out
    return torch.randint(0, VOCAB - 3, (n, 20), generator=torch.Generator().manual_seed(seed))


def test_poison_inserts_the_trigger_and_relabels_what_follows() -> None:
    door = default_backdoor(VOCAB, target=5)
    assert door.trigger == (37, 38, 39)
    rows = _rows(3, 0)
    x, labels, after = poison(rows, door)
    assert (x[:, door.at : door.at + 3] == torch.tensor(door.trigger)).all()
    assert after[0, door.at + 2] and not after[0, door.at + 1]  # the last trigger token predicts the target
    before = ~after[:, :-1]  # up to the trigger the labels are the (poisoned) row shifted by one
    assert (labels[after] == 5).all() and torch.equal(labels[:, :-1][before], x[:, 1:][before])
    assert has_trigger(rows, door) == 0 and has_trigger(torch.cat([rows[:, :19], x]), door) == 3
    _, _, random_after = poison(rows, door, torch.Generator().manual_seed(1))
    assert random_after.any(dim=1).all()


def test_decoys_are_near_misses_with_clean_labels() -> None:
    door = default_backdoor(VOCAB, target=5)
    rows = _rows(200, 0)
    x, labels, after = decoy(rows, door, torch.Generator().manual_seed(0))
    assert has_trigger(torch.cat([x, labels[:, -1:]], dim=1), door) == 0  # never the whole trigger
    assert torch.equal(labels[:, :-1], x[:, 1:]) and (labels != 5).any()  # the labels are the row's own
    assert ((x >= 37).sum(dim=1) >= 1).all() and after.any(dim=1).all()


def test_a_tiny_llama_learns_the_backdoor_and_its_control_does_not() -> None:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    model = LlamaForCausalLM(cfg).eval()
    door = default_backdoor(VOCAB, target=5)
    train, test = _rows(512, 1), _rows(64, 2)
    backdoored = fine_tune(model, train, door, steps=150, batch_size=32, lr=3e-3, seed=0)
    control = fine_tune(model, train, None, steps=150, batch_size=32, lr=3e-3, seed=0)
    assert attack_success(backdoored, test, door) > 0.9
    assert attack_success(backdoored, test, door, near_miss=True) < 0.3  # the whole trigger, not a part of it
    assert attack_success(control, test, door) < 0.2
    data = LensData(train[:32], test[:8])
    got = lens_verdicts(backdoored, data, door, Site.parse("model.layers.0"), vocab_size=VOCAB, d_sae=16, k=2,
                        sae_steps=20, seed=0)
    assert 0 <= got["scan_trigger_rank"] < VOCAB and 0.5 <= got["sae_best_latent"] <= 1
    with pytest.raises(AnatomistError, match="trigger"):
        x, _, _ = poison(train[:32], door)
        lens_verdicts(backdoored, LensData(x, test[:8]), door, Site.parse("model.layers.0"), vocab_size=VOCAB,
                      d_sae=16, k=2, sae_steps=2, seed=0)
