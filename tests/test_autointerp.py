"""Autointerp: the scoring functions on known answers, context picking on planted activations, the judges on
scripted answers, the run kind end to end (tiny model), and explanations on the dashboard's feature pages."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import report_fixtures as fx
from anatomist.core.io import load_json, save_json
from anatomist.core.metrics import read_metrics
from anatomist.interpret import autointerp as ai
from anatomist.interpret.llm import Chat, LanguageModel, PositionItem
from anatomist.report.site import build_report
from anatomist.runs import load_run_config, run

# ---------------------------------------------------------------------------------------------------------
# scoring functions


def test_simulation_score_perfect_constant_and_inverted() -> None:
    true = [np.array([0.0, 3.0, 0.0, 9.0]), np.array([1.0, 0.0, 0.0])]
    assert ai.simulation_score(true, [2 * t + 1 for t in true]) == pytest.approx(1.0)  # any increasing affine map
    assert ai.simulation_score(true, [np.full(len(t), 4.0) for t in true]) == 0.0  # constant: 0, not NaN
    assert ai.simulation_score(true, [-t for t in true]) == pytest.approx(-1.0)
    assert ai.pearson(np.zeros(3), np.zeros(3)) == 0.0


def test_balanced_accuracy_and_auroc_known_values() -> None:
    truth = np.array([True, True, True, False])
    assert ai.balanced_accuracy(truth, np.array([True, False, True, False])) == pytest.approx((2 / 3 + 1) / 2)
    assert ai.balanced_accuracy(truth, np.ones(4, dtype=bool)) == 0.5  # always yes: chance
    assert ai.balanced_accuracy(np.array([True, True]), np.array([True, False])) == 0.5  # one class: its recall
    assert math.isnan(ai.balanced_accuracy(np.array([], dtype=bool), np.array([], dtype=bool)))
    # positives 0.9, 0.4, 0.7 against the negative 0.5: 2 of 3 pairs ordered right
    assert ai.auroc(truth, np.array([0.9, 0.4, 0.7, 0.5])) == pytest.approx(2 / 3)
    assert ai.auroc(truth, np.full(4, 0.5)) == 0.5  # ties count half
    assert math.isnan(ai.auroc(np.array([True]), np.array([1.0])))


def test_expected_value_and_yes_probability() -> None:
    p = np.array([0.1, 0.2, 0.7])
    with np.errstate(divide="ignore"):
        lp = np.log(np.array([p, [1.0, 0.0, 0.0]]) * 0.5)  # unnormalised over the candidates: renormalised
    np.testing.assert_allclose(ai.expected_value(lp, (0, 1, 2)), [0.2 + 1.4, 0.0])
    assert ai.expected_value(np.full((1, 3), -np.inf), (0, 1, 2))[0] == 0.0
    np.testing.assert_allclose(ai.yes_probability(np.log([[0.3, 0.1], [1e-9, 1.0]])), [0.75, 1e-9], atol=1e-12)
    assert ai.yes_probability(np.array([[-np.inf, -np.inf]]))[0] == 0.5


def test_levels_floor_against_the_maximum() -> None:
    np.testing.assert_array_equal(ai.levels(np.array([-1.0, 0.0, 0.99, 1.0, 5.5, 10.0]), 10.0), [0, 0, 0, 1, 5, 10])
    np.testing.assert_array_equal(ai.levels(np.array([1.0, 2.0]), 0.0), [0, 0])


def test_bootstrap_interval_brackets_the_mean() -> None:
    assert ai.bootstrap_interval([0.4] * 5) == pytest.approx((0.4, 0.4, 0.4))
    mean, lo, hi = ai.bootstrap_interval([0.0, 1.0] * 20 + [math.nan], n_boot=2000, seed=1)
    assert mean == 0.5 and lo < 0.5 < hi and hi - lo < 0.4  # NaN left out; sd of the mean ~0.08
    assert all(math.isnan(x) for x in ai.bootstrap_interval([math.nan]))


def test_parsers() -> None:
    assert ai.parse_explanation('Explanation: "names of cities".\nmore') == "names of cities"
    assert ai.parse_explanation("This feature responds to the word 'the'") == "the word 'the'"
    assert ai.parse_explanation("  \n") == "(no explanation)"
    assert [ai.parse_yes_no(r) for r in ("Yes.", " no, because", "**Yes**", "maybe")] == [True, False, True, None]
    reply = "The\t0\n cat\t9\n sat 2\n on\n1990\t1\n"
    np.testing.assert_array_equal(ai.parse_simulation(reply, 6), [0, 9, 2, 1, 0, 0])  # " on" has no value: skipped


# ---------------------------------------------------------------------------------------------------------
# contexts on planted activations


def planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token ids [40, 30] (id 7 = "cat") and a feature active 1.0 on every cat, 3.0 on cats after id 5."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(10, 50, size=(40, 30))
    ids[rng.random(ids.shape) < 0.03] = 7
    ids[:, 0] = 5
    acts = np.where(ids == 7, 1.0, 0.0)
    acts[:, 1:] += np.where((ids[:, 1:] == 7) & (ids[:, :-1] == 5), 2.0, 0.0)
    return ids, acts


def show(window: list[int]) -> list[str]:
    return [" cat" if i == 7 else f" w{i}" for i in window]


def test_contexts_by_role_on_a_planted_feature() -> None:
    ids, acts = planted()
    fc = ai.feature_contexts(3, ids, acts, show, n_explain=4, n_score=3, before=4, after=2, seed=0)
    assert fc.max_act == 3.0 and len(fc.explain) == 4 and len(fc.top) == 3
    assert [len(getattr(fc, r)) for r in ("active", "random", "quiet")] == [3, 3, 3]
    strongest = int((acts == 3.0).sum())  # each at position 1 of its own sequence: no two windows overlap
    maxes = [ex.acts.max() for ex in fc.explain + fc.top]
    assert 0 < strongest < 7 and maxes.count(3.0) == strongest and min(maxes) == 1.0  # the strongest, then cats
    assert all(fc.fires(ex) for ex in fc.active) and not any(fc.fires(ex) for ex in fc.quiet)
    assert all(" cat" not in ex.text for ex in fc.quiet)
    assert all(len(ex.ids) == len(ex.text) == len(ex.acts) <= 7 for ex in fc.explain + fc.random)
    assert ai.keyword_of(fc) == 7


def test_picked_windows_never_overlap() -> None:
    ids, acts = planted(1)
    centres = ai.pick_centres(acts, 3.0, n_explain=6, n_score=5, before=4, after=2, seed=3)
    every = [c for cs in centres.values() for c in cs]
    assert len(every) == len(set(every))
    for (s1, t1) in every:
        for (s2, t2) in every:
            assert (s1, t1) == (s2, t2) or s1 != s2 or abs(t1 - t2) > 6


# ---------------------------------------------------------------------------------------------------------
# judges on scripted answers


class Scripted(LanguageModel):
    """A judge answering in text by a rule on the prompt's last message (no log-probabilities)."""

    id = "scripted"

    def __init__(self, rule: Any) -> None:
        self.rule = rule
        self.prompts: list[str] = []

    def complete(self, prompts: Sequence[Chat], max_tokens: int) -> list[str]:
        self.prompts += [p[-1]["content"] for p in prompts]
        return [self.rule(p[-1]["content"]) for p in prompts]


def _text(prompt: str) -> str:
    return prompt.split("Text: ", 1)[1].split("\n\n", 1)[0]


def planted_contexts() -> ai.FeatureContexts:
    ids, acts = planted()
    return ai.feature_contexts(0, ids, acts, show, n_explain=4, n_score=4, before=4, after=2, seed=0)


def test_detection_with_scripted_judges_gives_known_balanced_accuracies() -> None:
    fc = planted_contexts()
    knows = Scripted(lambda p: "Yes" if "cat" in _text(p) else "No")
    assert ai.score_detection(knows, "the word cat", fc)["detection"] == 1.0
    assert ai.score_detection(Scripted(lambda p: "Yes, surely"), "x", fc)["detection"] == 0.5
    assert ai.score_detection(Scripted(lambda p: "No" if "cat" in _text(p) else "Yes"), "x", fc)["detection"] == 0.0
    quiet_texts = {plain for plain in (ai.plain_text(ex) for ex in fc.quiet[:2])}  # half the negatives said Yes
    half = Scripted(lambda p: "Yes" if "cat" in _text(p) or _text(p) in quiet_texts else "No")
    assert ai.score_detection(half, "x", fc)["detection"] == 0.75
    assert len(knows.prompts) == 8 and all("Feature: the word cat" in p for p in knows.prompts)


def _marked_all_cats(prompt: str) -> bool:
    marked = re.findall(r"<<(.*?)>>", _text(prompt))
    return bool(marked) and all(m == "cat" for m in marked)


def test_fuzzing_with_scripted_judges_gives_known_balanced_accuracies() -> None:
    fc = planted_contexts()
    knows = Scripted(lambda p: "Yes" if _marked_all_cats(p) else "No")
    assert ai.score_fuzzing(knows, "cat", fc, seed=0)["fuzzing"] == 1.0
    assert ai.score_fuzzing(Scripted(lambda p: "No"), "cat", fc, seed=0)["fuzzing"] == 0.5
    assert len(knows.prompts) == 2 * len(fc.active)  # each active context: right marks and wrong marks


class Logprob(LanguageModel):
    """A judge with log-probabilities: P(Yes) 0.8 when the text holds a cat, else 0.3; simulations 9 on cats."""

    id = "logprob"
    can_score_choices = True
    can_score_positions = True

    def complete(self, prompts: Sequence[Chat], max_tokens: int) -> list[str]:
        raise AssertionError("a judge with log-probabilities is never asked for text")

    def choice_logprobs(self, prompts: Sequence[Chat], choices: Sequence[str]) -> list[list[float]]:
        return [list(np.log([0.8, 0.2] if "cat" in _text(p[-1]["content"]) else [0.3, 0.7])) for p in prompts]

    def position_logprobs(self, items: Sequence[PositionItem], choices: Sequence[str]) -> list[list[list[float]]]:
        def digit(part: str) -> list[float]:
            want = 9 if part.rsplit("\n", 1)[-1] == " cat\t" else 0
            return [0.0 if d == want else -np.inf for d in range(len(choices))]

        return [[digit(part) for part in parts] for _, parts in items]


def test_scores_from_log_probabilities_and_the_keyword_proxy() -> None:
    fc = planted_contexts()
    out = ai.score_feature("cats", Logprob(), fc, ai.SCORERS)
    # the simulator says 9 on every cat and 0 elsewhere; the truth is 1 or 3 on cats: correlated, not perfectly
    assert 0.8 < out.scores["simulation"] < 1.0
    assert out.scores["detection"] == 1.0 and out.scores["detection_auc"] == 1.0
    assert out.scores["keyword"] == 1.0 and out.keyword == " cat"
    assert out.explanation == "cats"


# ---------------------------------------------------------------------------------------------------------
# the run kind, and the dashboard


def test_autointerp_run_on_a_tiny_model_writes_explanations_and_dashboard_file(tmp_path: Path, tiny_lm: Path,
                                                                              tmp_cache: Path) -> None:
    dash = tmp_path / "dash"
    dash.mkdir()
    (dash / "dashboard.json").write_text("{}")
    over = [f"model={tiny_lm}", "site=model.layers.1", "n_seqs=8", "seq_len=20", "skip_seqs=0",
            "dictionaries={neurons: neurons, pca: pca}", "n_features=3", "n_explain=2", "n_score=2",
            "explain_tokens=3", "min_active=2", f"explainer.model={tiny_lm}", f"dashboards={{pca: {dash}}}",
            "n_boot=50"]
    cfg = load_run_config(str(Path(__file__).parent.parent / "experiments" / "smollm2_autointerp.yaml"), over)
    run(cfg, tmp_path / "run", threads=1)
    kind, _, metrics = read_metrics(tmp_path / "run")
    assert kind == "autointerp"
    table = metrics.tables["dictionaries"]
    assert set(table) == {"neurons", "pca"} and table["pca"]["n_features"] == 3
    for score in ("simulation", "detection", "fuzzing", "keyword"):
        row = table["neurons"]
        assert row[score] is None or row[f"{score}_lo"] <= row[score] <= row[f"{score}_hi"]
    assert len(metrics.tables["features"]) == 6
    doc = load_json(tmp_path / "run" / "explanations.json")
    assert set(doc["dictionaries"]) == {"neurons", "pca"}
    beside = load_json(dash / "explanations.json")
    assert set(beside["dictionaries"]) == {"pca"} and len(beside["dictionaries"]["pca"]["latents"]) == 3
    asked = metrics.numbers["llm_answers_asked"]
    assert asked > 0
    run(cfg, tmp_path / "again", threads=1)  # every answer cached: nothing asked again
    assert read_metrics(tmp_path / "again")[2].numbers["llm_answers_asked"] == 0


def test_feature_pages_carry_explanations_written_beside_the_dashboard(tmp_path: Path) -> None:
    run_dir = fx.run_folder(tmp_path)
    dash = run_dir / "sae" / "dashboard"
    save_json(dash / "explanations.json", {"format": "anatomist-explanations/1", "dictionaries": {"sae": {
        "source": "x", "latents": {"7": {"explanation": "the token <b>tok7</b>", "keyword": "tok7",
                                         "scores": {"simulation": 0.42, "detection": 0.9}}}}}})
    site = build_report(run_dir).parent
    index_js = (site / "features" / "sae__dashboard" / "data" / "index.js").read_text()
    assert '"explanations":{"7":[{"dictionary":"sae"' in index_js.replace(" ", "")
    assert "\\u003cb\\u003etok7" in index_js or "<b>tok7" not in index_js  # data, never markup in a script
    pw = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Chromium is absent")
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"])
        page = browser.new_page()
        page.goto((site / "features" / "sae__dashboard" / "latent.html").resolve().as_uri() + "#7")
        page.wait_for_selector("#explanations")
        text = page.locator("#explanations").inner_text()
        assert "the token <b>tok7</b>" in text and "simulation 0.42" in text  # shown as text
        page.goto((site / "features" / "sae__dashboard" / "latent.html").resolve().as_uri() + "#6")
        page.wait_for_selector(".ctx")
        assert page.locator("#explanations").count() == 0  # a latent without an explanation shows none
        browser.close()
