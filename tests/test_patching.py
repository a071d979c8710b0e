"""Feature patching: patching no unit gives the clean run and every unit the counterfactual's, for an SAE, a
transcoder and a basis; attribution patching equals activation patching where the metric is linear in the site;
the ordering, the count grid and the read-outs have their known answers; bad sites and widths are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from anatomist.core.errors import AnatomistError
from anatomist.features import SAEConfig, fit_basis, make_sae
from anatomist.features.base import SparseDictionary
from anatomist.interpret.patching import (
    Curve,
    CurveSpec,
    Decomposition,
    UnitDeltas,
    agreement,
    attribute,
    count_grid,
    forward_last,
    localisation_curve,
    patched_logits,
    run_nodes,
    single_unit_effects,
    unit_ranks,
)
from anatomist.interpret.tasks import IOITask, PairBatch, PromptPair, Task, batches
from anatomist.nets.assets import LoadedModel, load_model
from anatomist.nets.sites import Site, capture

pytestmark = pytest.mark.usefixtures("one_thread")


def _sae(d_in: int, d_sae: int, k: int, d_out: int | None = None, seed: int = 0) -> SparseDictionary:
    torch.manual_seed(seed)
    sae = make_sae(SAEConfig(arch="topk", d_in=d_in, d_sae=d_sae, k=k, d_out=d_out))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae.eval()


@pytest.fixture(scope="module")
def tiny(tiny_lm: Path) -> LoadedModel:
    return load_model(str(tiny_lm))


@pytest.fixture(scope="module")
def ioi_pairs(tiny: LoadedModel) -> list[PromptPair]:
    return IOITask(n=6, seed=0).make_pairs(tiny.tokenizer)  # lengths 15-19: batches hold padding


def _decompositions(tiny: LoadedModel) -> dict[str, Decomposition]:
    ids = torch.randint(0, 1000, (4, 12), generator=torch.Generator().manual_seed(0))
    rows = capture(tiny.model, ids, "model.layers.1")[Site.parse("model.layers.1")].reshape(-1, 16)
    return {
        "sae": Decomposition.at(_sae(16, 40, 4), "model.layers.0", name="sae"),
        "transcoder": Decomposition.at(_sae(16, 40, 4, d_out=16, seed=1), "model.layers.1.mlp:input",
                                       "model.layers.1.mlp:output", name="transcoder"),
        "pca": Decomposition.at(fit_basis("pca", rows), "model.layers.1", name="pca"),
    }


@pytest.mark.parametrize("which", ["sae", "transcoder", "pca"])
def test_patching_no_unit_gives_the_clean_run_and_every_unit_the_counterfactual(
        tiny: LoadedModel, ioi_pairs: list[PromptPair], which: str) -> None:
    dec = _decompositions(tiny)[which]
    for batch in batches(ioi_pairs, 4):
        clean_last, clean = run_nodes(tiny.model, batch.clean, batch.lengths, dec)
        cf_last, cf = run_nodes(tiny.model, batch.counterfactual, batch.lengths, dec)
        # the nodes sum to the site's real value
        torch.testing.assert_close(dec.dictionary.decode(clean.features) + clean.error, clean.value)
        deltas = UnitDeltas.between(clean, cf, dec.dictionary, batch.lengths)
        none = torch.zeros(*deltas.features.shape[:2], deltas.units_per_position, dtype=torch.bool)
        got_clean = patched_logits(tiny.model, batch.clean, batch.lengths, dec.write, deltas.patched(none))
        assert torch.equal(got_clean, clean_last)
        every = deltas.patched(~none)
        real = torch.arange(every.shape[1])[None] < batch.lengths[:, None]  # padding is never patched
        torch.testing.assert_close(every[real], cf.value[real], atol=1e-5, rtol=1e-5)
        got_cf = patched_logits(tiny.model, batch.clean, batch.lengths, dec.write, every)
        if which == "transcoder":  # the MLP's output is not all of the model: the rest stays clean
            cf = run_nodes(tiny.model, batch.counterfactual, batch.lengths, dec)[1]
            cf_last = patched_logits(tiny.model, batch.clean, batch.lengths, dec.write, cf.value)
        torch.testing.assert_close(got_cf, cf_last, atol=1e-5, rtol=1e-5)
        assert (clean_last - cf_last).abs().max() > 1e-4  # the patch does something


def test_the_curve_runs_from_the_clean_behaviour_to_the_counterfactual(
        tiny: LoadedModel, ioi_pairs: list[PromptPair]) -> None:
    dec = _decompositions(tiny)["sae"]
    task = IOITask(n=6, seed=0)
    curve = localisation_curve(tiny.model, ioi_pairs, task, dec, CurveSpec(counts=[0, 2, 10**9], batch_size=4))
    rows = curve.rows()
    assert rows["0"]["fraction"] == 0 and rows["0"]["kl_fraction"] == 0
    torch.testing.assert_close(curve.metric[0], curve.clean)
    torch.testing.assert_close(curve.metric[-1], curve.counterfactual, atol=1e-4, rtol=1e-4)
    assert abs(rows[str(10**9)]["fraction"] - 1) < 1e-3 and float(curve.kl[-1].abs().max()) < 1e-6
    assert float(curve.kl[0].min()) > 0 and rows[str(10**9)]["fraction_of_site"] == pytest.approx(1)
    assert curve.n_units.tolist() == [len(p.clean) * 41 for p in ioi_pairs]
    features, error = curve.baselines["features"], curve.baselines["error"]
    assert curve.units_to_reach(0.5) in (2, 10**9)
    # error nodes never patched: everything patched is the features' share; always patched: 0 units is the error's
    never = localisation_curve(tiny.model, ioi_pairs, task, dec, CurveSpec([0, 10**9], error_nodes="never"))
    always = localisation_curve(tiny.model, ioi_pairs, task, dec, CurveSpec([0, 10**9], error_nodes="always"))
    torch.testing.assert_close(never.metric[-1], features[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(always.metric[0], error[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(always.metric[-1], curve.counterfactual, atol=1e-4, rtol=1e-4)
    assert always.n_units.tolist() == [len(p.clean) * 40 for p in ioi_pairs]


def test_last_token_logits_of_a_padded_batch_are_each_prompts_own(tiny: LoadedModel,
                                                                   ioi_pairs: list[PromptPair]) -> None:
    """Right padding changes nothing before it, and logits_to_keep picks each prompt's last token."""
    batch = next(batches(ioi_pairs, 6))
    assert len(set(batch.lengths.tolist())) > 1
    got = forward_last(tiny.model, batch.clean, batch.lengths)
    for row, pair in enumerate(ioi_pairs[i] for i in batch.index.tolist()):
        alone = tiny.model(pair.clean[None]).logits[0, -1]
        torch.testing.assert_close(got[row], alone, atol=1e-5, rtol=1e-5)


def test_after_the_last_block_the_whole_change_sits_at_the_last_token(tiny: LoadedModel,
                                                                       ioi_pairs: list[PromptPair]) -> None:
    """The logits of the last token read only its own final residual; earlier ones carry it in block 1."""
    last_block = localisation_curve(tiny.model, ioi_pairs, IOITask(), _decompositions(tiny)["pca"], CurveSpec([0]))
    assert last_block.fraction(last_block.baselines["last_token"][0]) == pytest.approx(1, abs=1e-4)
    first_block = localisation_curve(tiny.model, ioi_pairs, IOITask(), _decompositions(tiny)["sae"], CurveSpec([0]))
    assert first_block.fraction(first_block.baselines["last_token"][0]) != pytest.approx(1, abs=1e-3)


class LinearToyLM(nn.Module):
    """A language model linear in its site `mix` (positions mixed causally by a running sum): the logit
    difference is linear in the site's value, so attribution patching is exact there."""

    def __init__(self, vocab: int = 12, d: int = 6):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.mix, self.unembed = nn.Embedding(vocab, d), nn.Linear(d, d), nn.Linear(d, vocab)

    def forward(self, ids: Tensor) -> Tensor:
        return self.unembed(self.mix(self.embed(ids)).cumsum(1))


def _toy_pairs() -> list[PromptPair]:
    gen = torch.Generator().manual_seed(1)
    pairs = []
    for length in (5, 5, 7):
        clean = torch.randint(0, 12, (length,), generator=gen)
        cf = clean.clone()
        cf[1:3] = torch.randint(0, 12, (2,), generator=gen)
        pairs.append(PromptPair(clean, cf, 3, 4))
    return pairs


@pytest.mark.parametrize("dictionary", ["topk", "ica"])
def test_attribution_equals_single_unit_activation_patching_where_the_metric_is_linear(dictionary: str) -> None:
    model = LinearToyLM().eval()
    if dictionary == "topk":
        sae = _sae(6, 10, 3)
    else:
        sae = fit_basis("ica", torch.randn(200, 6, generator=torch.Generator().manual_seed(0)) ** 3)
    dec = Decomposition.at(sae, "mix", name=dictionary)
    task = IOITask()  # its metric: logit(correct) - logit(wrong), here tokens 3 and 4
    for batch in batches(_toy_pairs(), 3):
        deltas, score, clean_score = _toy_deltas(model, batch, dec, task)
        estimates = attribute(model, batch.clean, batch.lengths, dec.write, deltas, score)
        every = torch.arange(estimates[0].numel()).expand(len(batch), -1)
        effects = single_unit_effects(model, batch.clean, batch.lengths, dec.write, deltas, every, score,
                                      clean_score, batch_size=64)
        flat = estimates.reshape(len(batch), -1)
        torch.testing.assert_close(flat, effects, atol=1e-5, rtol=1e-4)
        assert (flat.abs() > 1e-4).sum() >= 4  # several units matter: the equality is not 0 == 0
        assert agreement(flat.flatten(), effects.flatten())["sign_agreement"] == 1.0


def _toy_deltas(model: nn.Module, batch: PairBatch, dec: Decomposition,
                task: Task) -> tuple[UnitDeltas, object, Tensor]:
    clean_last, clean = run_nodes(model, batch.clean, batch.lengths, dec)
    _, cf = run_nodes(model, batch.counterfactual, batch.lengths, dec)

    def score(last: Tensor, rows: Tensor) -> Tensor:
        return task.metric(last, batch.rows(rows))

    return UnitDeltas.between(clean, cf, dec.dictionary, batch.lengths), score, score(clean_last,
                                                                                       torch.arange(len(batch)))


def test_attribution_mostly_agrees_in_sign_with_activation_patching_on_a_nonlinear_model(
        tiny: LoadedModel, ioi_pairs: list[PromptPair]) -> None:
    dec = _decompositions(tiny)["sae"]
    curve = localisation_curve(tiny.model, ioi_pairs, IOITask(), dec, CurveSpec([0], exact_candidates=8))
    assert curve.attribution.shape == (6 * 8,)
    assert agreement(curve.attribution, curve.effect)["sign_agreement"] >= 0.8


def test_units_are_ranked_by_estimate_with_inactive_units_last() -> None:
    estimates = torch.tensor([[[0.5, -2.0, 0.0], [1.0, 0.1, -0.3]]])  # [1 prompt, 2 positions, 2 features + error]
    active = torch.tensor([[[True, True, False], [True, False, True]]])
    ranks = unit_ranks(estimates, active, "abs", torch.ones(1))
    assert ranks.tolist() == [[2, 0, 4, 1, 5, 3]]
    towards_negative = unit_ranks(estimates, active, "signed", -torch.ones(1))
    assert towards_negative.tolist() == [[2, 0, 4, 3, 5, 1]]  # -2.0 first, +1.0 last of the active ones


def test_the_count_grid_is_powers_of_two_then_all() -> None:
    assert count_grid(10) == [0, 1, 2, 4, 8, 10]
    assert count_grid(8) == [0, 1, 2, 4, 8]
    assert count_grid(1) == [0, 1]


def test_units_to_reach_reads_the_first_count_of_the_grid_past_the_target() -> None:
    clean, cf = torch.tensor([4.0, 6.0]), torch.tensor([-4.0, -6.0])  # change of -10 on average
    metric = torch.tensor([[4.0, 6.0], [2.0, 0.0], [-2.0, -2.0], [-4.0, -6.0]])  # fractions 0, 0.4, 0.7, 1
    kl = torch.tensor([[2.0, 2.0], [0.5, 0.5], [0.1, 0.1], [0.0, 0.0]])  # KL fractions 0, 0.75, 0.95, 1
    curve = Curve("x", [0, 1, 4, 9], clean, cf, torch.tensor([2.0, 2.0]), metric, kl, torch.tensor([9, 9]))
    assert curve.units_to_reach(0.5) == 4 and curve.units_to_reach(0.9) == 9
    assert curve.units_to_reach(0.5, kl=True) == 1 and curve.units_to_reach(0.9, kl=True) == 4
    assert curve.rows()["1"]["fraction"] == pytest.approx(0.4)
    never = Curve("y", [0, 1], clean, cf, torch.tensor([2.0, 2.0]), metric[:2], kl[:2], torch.tensor([9, 9]))
    assert never.units_to_reach(0.9) is None


def test_bad_sites_widths_and_transcoder_targets_are_refused(tiny: LoadedModel,
                                                             ioi_pairs: list[PromptPair]) -> None:
    batch = next(batches(ioi_pairs, 2))
    with pytest.raises(AnatomistError, match="no module 'model.layers.9'"):
        run_nodes(tiny.model, batch.clean, batch.lengths, Decomposition.at(_sae(16, 8, 2), "model.layers.9"))
    with pytest.raises(AnatomistError, match="d_in 8 but site 'model.layers.0:output' has width 16"):
        run_nodes(tiny.model, batch.clean, batch.lengths, Decomposition.at(_sae(8, 8, 2), "model.layers.0"))
    wrong_out = Decomposition.at(_sae(16, 8, 2, d_out=12), "model.layers.1.mlp:input", "model.layers.1.mlp:output")
    with pytest.raises(AnatomistError, match="d_out 12 but site 'model.layers.1.mlp:output' has width 16"):
        run_nodes(tiny.model, batch.clean, batch.lengths, wrong_out)
    with pytest.raises(AnatomistError, match="transcoder.*target_site"):
        Decomposition.at(_sae(16, 8, 2, d_out=16), "model.layers.1.mlp:input")
    with pytest.raises(AnatomistError, match="is for transcoders"):
        Decomposition.at(_sae(16, 8, 2), "model.layers.0", "model.layers.1")
    with pytest.raises(AnatomistError, match="no prompt pairs"):
        localisation_curve(tiny.model, [], IOITask(), Decomposition.at(_sae(16, 8, 2), "model.layers.0"))
