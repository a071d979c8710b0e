"""`spd-lm`: SPD on every matrix of a Llama; its scores read against known answers on an untrained tiny Llama."""

from __future__ import annotations

import pytest
import torch

from anatomist.mechanisms import spd
from anatomist.nets.toys.llama_lm import LlamaLMConfig
from anatomist.runs.spd_lm import ALL_MATRICES, describe, score_lm

pytestmark = pytest.mark.usefixtures("one_thread")


class Digits:
    """A stand-in tokenizer: ids written as numbers, so contexts can be checked by eye."""

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


def _tiny(layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    model = LlamaLMConfig(vocab_size=32, d_model=16, n_heads=2, d_mlp=24, n_layers=layers, seq_len=8).build()
    return model.eval()


def test_score_of_a_delta_decomposition_reads_right() -> None:
    model = _tiny()
    cfg = spd.SPDConfig(C=6, delta_component=True, output_loss="kl")
    dec = spd.initial_decomposition(model, ALL_MATRICES, cfg)
    assert len(dec.targets) == 14  # q, k, v, o, gate, up, down in each of the 2 layers
    ids = torch.randint(0, 32, (3, 7), generator=torch.Generator().manual_seed(0))
    s = score_lm(dec, ids)
    assert abs(s["kl"]["all_on"]) < 1e-6  # with the deltas every mask 1 is the model itself
    assert s["kl"]["all_off"] > 1e-4 and s["kl"]["all_on_no_delta"] > 1e-4  # random factors alone are not W
    for row in s["matrices"].values():
        assert 0 <= row["ci_l0_fraction"] <= 1 and 0 <= row["alive"] <= 6 and row["delta_norm"] > 0.1


def test_describe_finds_the_token_a_subcomponent_is_planted_on() -> None:
    model = _tiny(layers=1)
    cfg = spd.SPDConfig(C=4, delta_component=True, output_loss="kl")
    dec = spd.initial_decomposition(model, ["model.layers.0.mlp.down_proj"], cfg)
    ids = torch.randint(1, 32, (2, 8), generator=torch.Generator().manual_seed(1))
    ids[1, 5] = 0  # the one position whose importance we plant
    planted = ids[:, :-1] == 0

    def importances(inputs: torch.Tensor) -> dict[str, torch.Tensor]:  # subcomponent 2: on at token 0 only
        ci = torch.zeros(*inputs.shape, 4)
        ci[..., 2] = (inputs == 0).float()
        return {"model.layers.0.mlp.down_proj": ci}

    dec.importances = importances  # type: ignore[method-assign]
    found = describe(dec, ids[:, :-1], ids[:, 1:], ids, Digits(), n=1, top=1)
    row = found["model.layers.0.mlp.down_proj"][0]
    assert row["subcomponent"] == 2 and row["mean_ci"] == pytest.approx(float(planted.float().mean()))
    assert row["top_tokens"][0]["token"] == "0" and row["top_tokens"][0]["next"] == str(int(ids[1, 6]))


def test_sparse_subcomponents_skip_the_always_on_ones() -> None:
    from anatomist.runs.spd_lm import sparse_subcomponents

    ci = torch.zeros(2, 50, 5)
    ci[..., 0] = 1.0  # always on
    ci[0, :3, 1] = 0.9  # on for 3 of 100 tokens
    ci[1, :7, 3] = 0.8  # on for 7
    ci[0, :40, 4] = 0.7  # on for 40: not sparse
    assert sparse_subcomponents(ci, 2) == [3, 1]
    assert sparse_subcomponents(ci, 4) == [3, 1, 0, 4]  # then the most used of the rest
