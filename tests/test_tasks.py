"""Tasks for feature patching: the IOI prompt pairs have the properties the method relies on, the metrics their
known values, and SmolLM2 does IOI on the generated prompts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from anatomist.core.errors import AnatomistError
from anatomist.interpret.tasks import (
    IOI_TEMPLATES,
    IOITask,
    PairsTask,
    PromptPair,
    batches,
    check_pairs,
    fraction_of_change,
    last_position,
    logit_diff,
)
from anatomist.nets.assets import LoadedModel

pytestmark = pytest.mark.usefixtures("one_thread")


def _names(tokenizer: object, ids: torch.Tensor) -> list[str]:
    return [tokenizer.decode([int(i)]) for i in ids]  # type: ignore[attr-defined]


@pytest.mark.parametrize("order", ["abba", "baba"])
def test_ioi_swap_pairs_differ_only_at_s2_where_the_subject_becomes_the_indirect_object(
        smollm2: LoadedModel, order: str) -> None:
    tok = smollm2.tokenizer
    pairs = IOITask(n=24, counterfactual="swap", order=order, seed=3).make_pairs(tok)  # type: ignore[arg-type]
    for p in pairs:
        assert p.clean.shape == p.counterfactual.shape
        io, s = tok.decode([p.correct]), tok.decode([p.wrong])
        assert io != s and io.startswith(" ") and len(tok(io, add_special_tokens=False).input_ids) == 1
        assert p.clean[0] == tok.bos_token_id
        differ = (p.clean != p.counterfactual).nonzero().flatten().tolist()
        assert len(differ) == 1  # only S2 changes
        assert int(p.clean[differ[0]]) == p.wrong and int(p.counterfactual[differ[0]]) == p.correct
        names = [i for i in p.clean.tolist() if i in (p.correct, p.wrong)]  # IO once, S twice, S last
        first = p.correct if order == "abba" else p.wrong
        assert names == [first, p.wrong if first == p.correct else p.correct, p.wrong]
        assert p.text.startswith(tok.decode(p.clean[1:].tolist())[:10])


def test_ioi_fresh_pairs_replace_both_names_by_two_others(smollm2: LoadedModel) -> None:
    tok = smollm2.tokenizer
    for p in IOITask(n=16, counterfactual="fresh", seed=1).make_pairs(tok):
        differ = (p.clean != p.counterfactual).nonzero().flatten()
        assert len(differ) == 3  # the three name positions
        new = set(p.counterfactual[differ].tolist())
        assert len(new) == 2 and not new & {p.correct, p.wrong}
        assert set(p.clean[differ].tolist()) == {p.correct, p.wrong}


def test_ioi_is_deterministic_in_its_seed_and_uses_every_template(smollm2: LoadedModel) -> None:
    tok = smollm2.tokenizer
    a, b = IOITask(n=16, seed=5).make_pairs(tok), IOITask(n=16, seed=5).make_pairs(tok)
    assert [p.text for p in a] == [p.text for p in b]
    assert [p.text for p in a] != [p.text for p in IOITask(n=16, seed=6).make_pairs(tok)]
    skeletons = set()
    for p in a:  # the sentence with its names blanked: one per template
        io, s = tok.decode([p.correct]).strip(), tok.decode([p.wrong]).strip()
        skeletons.add(p.text.replace(io, "X").replace(s, "X"))
    assert len(skeletons) == len(IOI_TEMPLATES)


def test_multi_token_names_answers_and_bad_templates_are_refused(smollm2: LoadedModel) -> None:
    tok = smollm2.tokenizer
    with pytest.raises(AnatomistError, match="Bartholomew"):
        IOITask(n=2, names=["Mary", "John", "Bartholomew-Smythe", "Tom"]).make_pairs(tok)
    with pytest.raises(AnatomistError, match=r"\{S\}"):
        IOITask(templates=["When {A} and {B} met"])
    with pytest.raises(AnatomistError, match="counterfactual"):
        IOITask(counterfactual="other")  # type: ignore[arg-type]
    with pytest.raises(AnatomistError, match="one token"):
        PairsTask([{"clean": "a b", "counterfactual": "a c", "correct": " Parisienne-ville", "wrong": " x"}]
                  ).make_pairs(tok)


def test_pairs_of_unequal_length_are_refused_naming_the_pair(smollm2: LoadedModel, tmp_path: Path) -> None:
    records = [{"clean": "The capital of France is", "counterfactual": "The capital of Italy is",
                "correct": " Paris", "wrong": " Rome"},
               {"clean": "The capital of France is", "counterfactual": "The capital city of the Netherlands is",
                "correct": " Paris", "wrong": " Amsterdam"}]
    file = tmp_path / "pairs.jsonl"
    file.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    with pytest.raises(AnatomistError, match="pair 1.*one length"):
        PairsTask.from_jsonl(file).make_pairs(smollm2.tokenizer)
    (pair,) = PairsTask(records[:1]).make_pairs(smollm2.tokenizer)
    assert smollm2.tokenizer.decode([pair.correct]) == " Paris"
    file.write_text("{not json\n")
    with pytest.raises(AnatomistError, match="line 1"):
        PairsTask.from_jsonl(file)
    with pytest.raises(AnatomistError, match="record 0 lacks"):
        PairsTask([{"clean": "x"}])


def test_check_pairs_refuses_no_pairs() -> None:
    with pytest.raises(AnatomistError, match="no prompt pairs"):
        check_pairs([])


def _pair(ids: list[int], cf: list[int], correct: int = 1, wrong: int = 2) -> PromptPair:
    return PromptPair(torch.tensor(ids), torch.tensor(cf), correct, wrong)


def test_batches_sort_by_length_pad_on_the_right_and_keep_each_pairs_index() -> None:
    pairs = [_pair([5, 6, 7], [5, 6, 8]), _pair([5, 6], [5, 9]), _pair([5, 6, 7, 8], [5, 6, 7, 9], 3, 4)]
    got = list(batches(pairs, batch_size=2, pad=0))
    assert [b.index.tolist() for b in got] == [[1, 0], [2]]
    assert got[0].clean.tolist() == [[5, 6, 0], [5, 6, 7]] and got[0].lengths.tolist() == [2, 3]
    assert got[0].counterfactual.tolist() == [[5, 9, 0], [5, 6, 8]]
    assert got[1].answers.tolist() == [[3, 4]]
    logits = torch.arange(2 * 3 * 4, dtype=torch.float).reshape(2, 3, 4)
    assert last_position(logits, got[0].lengths).tolist() == [logits[0, 1].tolist(), logits[1, 2].tolist()]
    with pytest.raises(AnatomistError, match="batch_size"):
        next(batches(pairs, 0))


def test_logit_diff_and_fraction_of_change_have_their_known_values() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, -1.0, 0.5]])
    assert logit_diff(logits, torch.tensor([[1, 2], [0, 1]])).tolist() == [2.0, 3.0]
    assert fraction_of_change(clean=4.0, counterfactual=-4.0, patched=0.0) == 0.5
    assert fraction_of_change(clean=4.0, counterfactual=-4.0, patched=4.0) == 0.0
    assert fraction_of_change(clean=4.0, counterfactual=-4.0, patched=-4.0) == 1.0
    assert math.isnan(fraction_of_change(1.0, 1.0, 1.0))


def test_smollm2_prefers_the_indirect_object_on_generated_ioi_prompts(smollm2: LoadedModel) -> None:
    """The behaviour the task localises exists: mean logit difference IO - S above 2 (about 4.5 measured)."""
    task = IOITask(n=16, seed=0)
    pairs = task.make_pairs(smollm2.tokenizer)
    diffs, flipped = [], []
    with torch.no_grad():
        for batch in batches(pairs, 16):
            clean = last_position(smollm2.model(batch.clean).logits, batch.lengths)
            cf = last_position(smollm2.model(batch.counterfactual).logits, batch.lengths)
            diffs.append(task.metric(clean, batch))
            flipped.append(task.metric(cf, batch))
    diff, cf_diff = torch.cat(diffs), torch.cat(flipped)
    assert diff.mean() > 2 and (diff > 0).float().mean() >= 0.8
    assert cf_diff.mean() < -2  # the swapped S2 flips the answer
