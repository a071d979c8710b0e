"""Automated interpretability: a language model explains a feature from its top contexts, and judges score it.

The method of Bills et al. 2023 ("Language models can explain neurons in language models"), as Cunningham et al.
2023 ("Sparse Autoencoders Find Highly Interpretable Features in Language Models") used it to compare SAE features
with neurons, PCA, ICA and random directions, plus the cheaper judges of EleutherAI's delphi (Paulo et al. 2024):

1. Contexts. For each feature, windows of `before` + 1 + `after` tokens around chosen centres: the top-activating
   ones (no two windows overlapping), split alternately into those the explainer sees and held-out ones; centres
   drawn across the quantiles of the feature's nonzero activations ("active"); uniformly random centres; and
   "quiet" windows where the feature is active nowhere. Activations are discretised 0-10 against the feature's
   maximum (floor(10·a / max), Bills et al.); a token is *active* at level >= 1, a window *fires* when any token
   is active. Dense bases (neurons, PCA, ICA, random directions: signed, `identity` activation) are scored on their
   positive side: a = max(value, 0), so top contexts are those with the highest values.
2. Explanation: the explainer sees the explain-contexts with active tokens marked <<like this>>[level] and answers
   with a short phrase.
3. Scores, each from a judge that sees only the explanation and a context:
   - simulation (Bills et al.): the judge predicts every token's activation; with a local model, one teacher-forced
     forward per context reads the next-token distribution over the digits 0-9 after each token and takes its
     expected value (0-9, not 0-10: "10" is two tokens for digit-splitting tokenizers; the score is a correlation,
     blind to the scale). Score: Pearson correlation of predicted and true activations over every token of the
     held-out top and the random contexts together (0 when either side is constant).
   - detection (delphi): does the feature fire in this context? active contexts vs quiet ones; balanced accuracy.
   - fuzzing (delphi): are the marked tokens the active ones? each active context once with its active tokens
     marked and once with as many inactive tokens marked; balanced accuracy.
   Yes/No judges read P(Yes) against P(No) where the model gives log-probabilities (and the AUROC of P(Yes) is
   reported too), else parse the reply's first word.
4. A judge-free proxy: the keyword explainer (the token most often at the peak of the explain-contexts) and its
   detection balanced accuracy (the context fires iff it holds that token).

The scoring functions (`pearson`, `balanced_accuracy`, `auroc`, `expected_value`, `simulation_score`, ...) take
plain arrays, so they are tested without any language model.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata

from anatomist.interpret.llm import Chat, LanguageModel, chat

MAX_LEVEL = 10  # explanations show activations on Bills et al.'s 0-10 scale
SIM_VALUES = tuple(range(10))  # the simulator's digits: one token each, so one forward reads them all
YES_NO = ("Yes", "No")
PLACEHOLDER = "unknown"  # what the teacher-forced simulation reply holds where a prediction goes (Bills et al.)
SCORERS = ("simulation", "detection", "fuzzing")


# ---------------------------------------------------------------------------------------------------------
# scoring, on plain arrays


def levels(acts: np.ndarray, max_act: float) -> np.ndarray:
    """Activations discretised 0..MAX_LEVEL against the feature's maximum: floor(10 · max(a, 0) / max)."""
    if not max_act > 0:
        return np.zeros(np.shape(acts), dtype=np.int64)
    scaled = np.floor(MAX_LEVEL * np.clip(np.nan_to_num(acts), 0, None) / max_act)
    return np.clip(scaled, 0, MAX_LEVEL).astype(np.int64)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0 (not NaN) when either side is constant: a constant prediction explains nothing."""
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if len(x) != len(y):
        raise ValueError(f"pearson: {len(x)} values against {len(y)}")
    dx, dy = x - x.mean() if len(x) else x, y - y.mean() if len(y) else y
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy / denom) if denom > 0 else 0.0


def simulation_score(true: Sequence[np.ndarray], predicted: Sequence[np.ndarray]) -> float:
    """Bills et al.'s score: the correlation over all tokens of all scored contexts together."""
    if not true:
        return math.nan
    return pearson(np.concatenate([np.ravel(t) for t in true]), np.concatenate([np.ravel(p) for p in predicted]))


def balanced_accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Mean over the classes present of the fraction of that class predicted right (chance: 0.5); NaN if empty."""
    truth, predicted = np.asarray(truth, dtype=bool), np.asarray(predicted, dtype=bool)
    recalls = [float((predicted[truth == c] == c).mean()) for c in (True, False) if (truth == c).any()]
    return float(np.mean(recalls)) if recalls else math.nan


def auroc(truth: np.ndarray, score: np.ndarray) -> float:
    """P(score of a random positive > that of a random negative), ties counted half; NaN without both classes."""
    truth, score = np.asarray(truth, dtype=bool), np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(score)
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def expected_value(logprobs: np.ndarray, values: Sequence[float] = SIM_VALUES) -> np.ndarray:
    """[n, k] log-probabilities of k candidates -> [n] expected value under them, renormalised over the candidates
    (0 where none has any probability)."""
    lp = np.asarray(logprobs, dtype=np.float64)
    top = lp.max(axis=-1, keepdims=True)
    finite = np.isfinite(top)
    p = np.where(finite, np.exp(lp - np.where(finite, top, 0.0)), 0.0)
    total = p.sum(-1)
    ev = (p * np.asarray(values, dtype=np.float64)).sum(-1)
    return np.where(total > 0, ev / np.where(total > 0, total, 1.0), 0.0)


def yes_probability(logprobs: np.ndarray) -> np.ndarray:
    """[n, 2] log-probabilities of (Yes, No) -> P(Yes) renormalised over the two (0.5 when neither is likely)."""
    lp = np.asarray(logprobs, dtype=np.float64)
    p = expected_value(lp, (1.0, 0.0))
    return np.where(np.isfinite(lp).any(-1), p, 0.5)


def bootstrap_interval(values: Sequence[float], n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of the finite values and a percentile bootstrap interval over them."""
    x = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(1)
    tail = (1 - level) / 2 * 100
    return float(x.mean()), float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


# ---------------------------------------------------------------------------------------------------------
# contexts


@dataclass
class Excerpt:
    """A window of text: token ids, the text each shows, and the feature's activation on each."""

    ids: list[int]
    text: list[str]
    acts: np.ndarray

    def levels(self, max_act: float) -> np.ndarray:
        return levels(self.acts, max_act)


@dataclass
class FeatureContexts:
    """A feature's contexts by role (see the module docstring); `quiet_found` counts truly quiet windows."""

    feature: int
    max_act: float
    explain: list[Excerpt] = field(default_factory=list)
    top: list[Excerpt] = field(default_factory=list)
    random: list[Excerpt] = field(default_factory=list)
    active: list[Excerpt] = field(default_factory=list)
    quiet: list[Excerpt] = field(default_factory=list)

    def fires(self, ex: Excerpt) -> bool:
        return bool((ex.levels(self.max_act) > 0).any())


Centre = tuple[int, int]  # (sequence, position)


class CentrePicker:
    """Chooses window centres in acts [n_seqs, T] so that no two windows overlap."""

    def __init__(self, acts: np.ndarray, max_act: float, before: int, after: int, rng: np.random.Generator) -> None:
        self.acts, self.before, self.after, self.rng = acts, before, after, rng
        self.level = levels(acts, max_act)
        self.blocked = np.zeros(acts.shape, dtype=bool)

    def take(self, s: int, t: int) -> Centre:
        span = self.before + self.after  # centres this close would give overlapping windows
        self.blocked[s, max(0, t - span) : t + span + 1] = True
        return s, t

    def top(self, n: int) -> list[Centre]:
        """The n highest active positions, greedily, skipping those whose window would overlap a chosen one."""
        out: list[Centre] = []
        flat = np.argsort(-self.acts, axis=None, kind="stable")
        for idx in flat:
            s, t = np.unravel_index(idx, self.acts.shape)
            if len(out) == n or self.level[s, t] == 0:
                break
            if not self.blocked[s, t]:
                out.append(self.take(int(s), int(t)))
        return out

    def across_quantiles(self, n: int) -> list[Centre]:
        """One active centre from each of n equal-count bins of the active positions sorted by activation."""
        s_idx, t_idx = np.nonzero(self.level > 0)
        order = np.argsort(self.acts[s_idx, t_idx], kind="stable")
        out: list[Centre] = []
        for part in np.array_split(order, n) if len(order) and n > 0 else []:
            for j in self.rng.permutation(part):
                s, t = int(s_idx[j]), int(t_idx[j])
                if not self.blocked[s, t]:
                    out.append(self.take(s, t))
                    break
        return out

    def uniform(self, n: int, allowed: np.ndarray | None = None) -> list[Centre]:
        """n centres drawn uniformly among the positions not yet blocked (and `allowed`, when given)."""
        out: list[Centre] = []
        ok = ~self.blocked if allowed is None else allowed & ~self.blocked
        for idx in self.rng.permutation(np.flatnonzero(ok)):
            if len(out) == n:
                break
            s, t = np.unravel_index(idx, self.acts.shape)
            if not self.blocked[s, t]:
                out.append(self.take(int(s), int(t)))
        return out

    def window_max(self) -> np.ndarray:
        """[n_seqs, T]: the highest level in the window around each position."""
        n, T = self.level.shape
        padded = np.zeros((n, T + self.before + self.after), dtype=np.int64)
        padded[:, self.before : self.before + T] = self.level
        return np.max([padded[:, k : k + T] for k in range(self.before + self.after + 1)], axis=0)

    def quiet(self, n: int) -> list[Centre]:
        """n windows where the feature is active nowhere; if too few exist, the rest from the quietest windows."""
        wmax = self.window_max()
        out = self.uniform(n, allowed=wmax == 0)
        for level in range(1, MAX_LEVEL + 1):
            if len(out) == n:
                break
            out += self.uniform(n - len(out), allowed=wmax == level)
        return out


def pick_centres(acts: np.ndarray, max_act: float, *, n_explain: int, n_score: int, before: int, after: int,
                 seed: int) -> dict[str, list[Centre]]:
    """Centres by role: explain / top (alternate ranks of the n_explain + n_score highest), active, random, quiet."""
    picker = CentrePicker(acts, max_act, before, after, np.random.default_rng(seed))
    explain: list[Centre] = []
    top: list[Centre] = []
    for c in picker.top(n_explain + n_score):  # alternate ranks: explainer and simulator see equally strong ones
        to_explain = len(explain) < n_explain and (len(top) >= n_score or len(explain) <= len(top))
        (explain if to_explain else top).append(c)
    return {"explain": explain, "top": top, "active": picker.across_quantiles(n_score),
            "random": picker.uniform(n_score), "quiet": picker.quiet(n_score)}


def excerpt(ids: np.ndarray, acts: np.ndarray, centre: Centre, before: int, after: int,
            show: Callable[[list[int]], list[str]]) -> Excerpt:
    """The window around `centre` of token ids [n_seqs, T] and activations [n_seqs, T], cut at the sequence ends."""
    s, t = centre
    lo, hi = max(0, t - before), min(ids.shape[1], t + after + 1)
    window = [int(i) for i in ids[s, lo:hi]]
    return Excerpt(window, show(window), np.asarray(acts[s, lo:hi], dtype=np.float64))


def feature_contexts(feature: int, ids: np.ndarray, acts: np.ndarray, show: Callable[[list[int]], list[str]], *,
                     n_explain: int, n_score: int, before: int, after: int, seed: int) -> FeatureContexts:
    """Every context of one feature, from its (positive-part) activations [n_seqs, T] on token ids [n_seqs, T]."""
    acts = np.clip(np.nan_to_num(acts), 0, None)
    max_act = float(acts.max()) if acts.size else 0.0
    centres = pick_centres(acts, max_act, n_explain=n_explain, n_score=n_score, before=before, after=after,
                           seed=seed)
    out = FeatureContexts(feature, max_act)
    for role, cs in centres.items():
        setattr(out, role, [excerpt(ids, acts, c, before, after, show) for c in cs])
    return out


# ---------------------------------------------------------------------------------------------------------
# prompts


def shown(token: str) -> str:
    """A token as prompts write it: newlines and tabs visible, so one token stays on one line."""
    return token.replace("\n", "\\n").replace("\t", "\\t")


def _marked(token: str, mark: bool, level: int | None = None) -> str:
    """`token` as <<token>> (leading spaces kept outside), with `[level]` when given."""
    if not mark or not token.strip():
        return shown(token)
    core = token.lstrip()
    tag = f"[{level}]" if level is not None else ""
    return f"{shown(token[: len(token) - len(core)])}<<{shown(core)}>>{tag}"


def marked_text(ex: Excerpt, marks: np.ndarray, lv: np.ndarray | None = None) -> str:
    """The excerpt's text with the tokens where `marks` holds marked (and their level, when `lv` is given)."""
    return "".join(_marked(tok, bool(m), None if lv is None else int(lv[k]))
                   for k, (tok, m) in enumerate(zip(ex.text, marks, strict=True)))


def plain_text(ex: Excerpt) -> str:
    return shown("".join(ex.text))


EXPLAIN_SYSTEM = (
    "You study features of a language model. A feature is active on some tokens of a text and silent on the rest. "
    "You see excerpts of text in which every token where the feature is active is marked <<like this>>, followed by "
    "its strength in brackets, from [1] (weak) to [10] (the strongest it gets). Find what the marked tokens have in "
    "common: the words themselves, what they mean, or the text around them.")


def explain_prompt(fc: FeatureContexts) -> Chat:
    """The explainer's prompt: the explain-contexts with active tokens marked, and the most active tokens listed."""
    lines: list[str] = []
    peaks: Counter[str] = Counter()
    for k, ex in enumerate(fc.explain, 1):
        lv = ex.levels(fc.max_act)
        lines.append(f"Excerpt {k}: {marked_text(ex, lv > 0, lv)}")
        peaks[ex.text[int(np.argmax(ex.acts))].strip()] += 1
    common = ", ".join(f'"{shown(t)}"' for t, _ in peaks.most_common(5) if t)
    user = "\n".join(lines) + (f"\n\nTokens at the peaks: {common}." if common else "")
    user += "\n\nWhat does this feature respond to? Answer with one short phrase of at most 12 words."
    return chat(user, EXPLAIN_SYSTEM)


_LEAD_INS = re.compile(r"^(explanation|answer|the feature|this feature|feature)\s*(:|responds to|fires on|is)?\s*",
                       re.IGNORECASE)


def parse_explanation(reply: str) -> str:
    """The first line of the reply without lead-ins ("Explanation:", "This feature responds to") and quotes."""
    first = next((line.strip() for line in reply.splitlines() if line.strip()), "")
    text = _LEAD_INS.sub("", first).strip().strip("*` ").rstrip(".")
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":  # a quoted answer
        text = text[1:-1]
    return text[:200] or "(no explanation)"


SIM_SYSTEM = (
    "You predict how strongly a feature of a language model activates on each token of a text, from a description "
    "of the feature: 0 where it is silent, up to 9 where it is as active as it ever gets. Most tokens are 0.")


def _sim_user(explanation: str, ex: Excerpt) -> str:
    return (f"Feature: {explanation}\n\nText: {plain_text(ex)}\n\nWrite each token of the text on its own line, "
            "then a tab, then the feature's activation on it (a digit from 0 to 9).")


# one worked example before the real question (Bills et al. prompt with few-shot examples too)
SHOT_TOKENS = ("My", " dog", " and", " my", " cat", " like", " fish", ".")
SHOT_VALUES = (0, 8, 0, 0, 9, 0, 6, 0)
SHOT = Excerpt([], list(SHOT_TOKENS), np.asarray(SHOT_VALUES, dtype=np.float64))


def _sim_prompt(explanation: str, ex: Excerpt, user: str) -> Chat:
    shot_reply = "".join(f"{t}\t{v}\n" for t, v in zip(SHOT_TOKENS, SHOT_VALUES, strict=True))
    return [*chat(_sim_user("names of animals", SHOT), SIM_SYSTEM), {"role": "assistant", "content": shot_reply},
            {"role": "user", "content": user}]


def simulation_item(explanation: str, ex: Excerpt) -> tuple[Chat, list[str]]:
    """The simulator's prompt and its teacher-forced reply: a part per token ending in a tab, after which the digit
    distribution is read; earlier predictions hold the placeholder."""
    parts = [f"{'' if k == 0 else PLACEHOLDER + chr(10)}{shown(tok)}\t" for k, tok in enumerate(ex.text)]
    return _sim_prompt(explanation, ex, _sim_user(explanation, ex)), parts


def simulation_text_prompt(explanation: str, ex: Excerpt) -> Chat:
    """For judges without position log-probabilities: the same question, answered in text."""
    tokens = "\n".join(shown(t) for t in ex.text)
    return _sim_prompt(explanation, ex, _sim_user(explanation, ex) + f"\n\nThe tokens:\n{tokens}")


def parse_simulation(reply: str, n: int) -> np.ndarray:
    """[n] predictions from a text reply: the last number on each line, in order; missing ones are 0."""
    values = []
    for line in reply.splitlines():
        tail = line.rsplit("\t", 1)[-1] if "\t" in line else line
        found = re.search(r"(?:^|\s)(\d+(?:\.\d+)?)\s*$", tail)  # a number ending the line, after a tab or space
        if found and ("\t" in line or found.start(1) > 0):
            values.append(min(float(found.group(1)), float(max(SIM_VALUES))))
    out = np.zeros(n)
    out[: min(n, len(values))] = values[:n]
    return out


JUDGE_SYSTEM = ("You check descriptions of the features of a language model against text. "
                "Answer with one word: Yes or No.")


def detection_prompt(explanation: str, ex: Excerpt) -> Chat:
    return chat(f"Feature: {explanation}\n\nText: {plain_text(ex)}\n\nIs this feature active anywhere in the text? "
                "Answer Yes or No.", JUDGE_SYSTEM)


def fuzzing_prompt(explanation: str, ex: Excerpt, marks: np.ndarray) -> Chat:
    return chat(f"Feature: {explanation}\n\nText: {marked_text(ex, marks)}\n\nSome tokens are marked <<like this>>. "
                "Is the feature active on exactly the marked tokens? Answer Yes or No.", JUDGE_SYSTEM)


def parse_yes_no(reply: str) -> bool | None:
    word = re.match(r"\W*(\w+)", reply)
    answer = word.group(1).lower() if word else ""
    return True if answer in ("yes", "true") else False if answer in ("no", "false") else None


# ---------------------------------------------------------------------------------------------------------
# explaining and scoring with a language model


def explain(lm: LanguageModel, fcs: Sequence[FeatureContexts], max_tokens: int = 40) -> list[str]:
    """One explanation per feature (prompts batched across features)."""
    return [parse_explanation(r) for r in lm.complete([explain_prompt(fc) for fc in fcs], max_tokens)]


def simulate(lm: LanguageModel, explanation: str, excerpts: Sequence[Excerpt]) -> list[np.ndarray]:
    """Predicted activation of every token of every excerpt: expected digit (teacher-forced) or parsed text."""
    if lm.can_score_positions:
        items = [simulation_item(explanation, ex) for ex in excerpts]
        return [expected_value(np.asarray(lp)) for lp in lm.position_logprobs(items, [str(v) for v in SIM_VALUES])]
    replies = lm.complete([simulation_text_prompt(explanation, ex) for ex in excerpts], 6 * max(
        (len(ex.text) for ex in excerpts), default=1))
    return [parse_simulation(r, len(ex.text)) for r, ex in zip(replies, excerpts, strict=True)]


def judge_yes(lm: LanguageModel, prompts: Sequence[Chat]) -> tuple[np.ndarray, np.ndarray]:
    """(said yes [n] bool, P(yes) [n]) from choice log-probabilities, else from the reply's first word (an
    unparsable reply counts as No, P(yes) 0.5)."""
    if lm.can_score_choices:
        p = yes_probability(np.asarray(lm.choice_logprobs(prompts, YES_NO)).reshape(len(prompts), 2))
        return p > 0.5, p
    said = [parse_yes_no(r) for r in lm.complete(prompts, 3)]
    return np.array([s is True for s in said]), np.array([0.5 if s is None else float(s) for s in said])


def fuzz_marks(lv: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """(right, wrong) marks for one active context: its active tokens, and as many of its inactive tokens drawn at
    random (None when it has no inactive token to mark)."""
    right = lv > 0
    silent = np.flatnonzero(~right)
    if len(silent) == 0 or not right.any():
        return right, None
    wrong = np.zeros_like(right)
    wrong[rng.choice(silent, size=min(int(right.sum()), len(silent)), replace=False)] = True
    return right, wrong


@dataclass
class FeatureScores:
    feature: int
    explanation: str
    keyword: str
    scores: dict[str, float] = field(default_factory=dict)


def detection_truth(fc: FeatureContexts) -> tuple[list[Excerpt], np.ndarray]:
    """The detection set: active and quiet contexts, each labelled by whether it fires."""
    excerpts = fc.active + fc.quiet
    return excerpts, np.array([fc.fires(ex) for ex in excerpts], dtype=bool)


def score_simulation(lm: LanguageModel, explanation: str, fc: FeatureContexts) -> dict[str, float]:
    excerpts = fc.top + fc.random
    predicted = simulate(lm, explanation, excerpts)
    return {"simulation": simulation_score([ex.acts for ex in excerpts], predicted)}


def score_detection(lm: LanguageModel, explanation: str, fc: FeatureContexts) -> dict[str, float]:
    excerpts, truth = detection_truth(fc)
    said, p_yes = judge_yes(lm, [detection_prompt(explanation, ex) for ex in excerpts])
    return {"detection": balanced_accuracy(truth, said), "detection_auc": auroc(truth, p_yes)}


def score_fuzzing(lm: LanguageModel, explanation: str, fc: FeatureContexts, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    prompts, truth = [], []
    for ex in fc.active:
        right, wrong = fuzz_marks(ex.levels(fc.max_act), rng)
        for marks, correct in ((right, True), (wrong, False)):
            if marks is not None and marks.any():
                prompts.append(fuzzing_prompt(explanation, ex, marks))
                truth.append(correct)
    if not prompts:
        return {"fuzzing": math.nan, "fuzzing_auc": math.nan}
    said, p_yes = judge_yes(lm, prompts)
    return {"fuzzing": balanced_accuracy(np.array(truth), said), "fuzzing_auc": auroc(np.array(truth), p_yes)}


def keyword_of(fc: FeatureContexts) -> int | None:
    """The keyword explainer: the token id most often at the peak of the explain-contexts (ties: the first seen)."""
    peaks = [ex.ids[int(np.argmax(ex.acts))] for ex in fc.explain if len(ex.ids)]
    return Counter(peaks).most_common(1)[0][0] if peaks else None


def keyword_detection(keyword: int | None, excerpts: Sequence[Excerpt], truth: np.ndarray) -> float:
    """Balanced accuracy of "the context fires iff it holds the keyword token" (the judge-free proxy)."""
    if keyword is None or not len(excerpts):
        return math.nan
    return balanced_accuracy(truth, np.array([keyword in ex.ids for ex in excerpts]))


def score_feature(explanation: str, judge: LanguageModel | None, fc: FeatureContexts, scorers: Sequence[str],
                  seed: int = 0) -> FeatureScores:
    """Every asked score of one feature, given its explanation; the keyword proxy is always computed (and is all
    that is computed without a judge)."""
    kw = keyword_of(fc)
    excerpts, truth = detection_truth(fc)
    kw_text = next((ex.text[ex.ids.index(kw)] for ex in fc.explain if kw in ex.ids), "") if kw is not None else ""
    out = FeatureScores(fc.feature, explanation, kw_text, {"keyword": keyword_detection(kw, excerpts, truth)})
    if judge is None:
        return out
    if "simulation" in scorers:
        out.scores.update(score_simulation(judge, explanation, fc))
    if "detection" in scorers:
        out.scores.update(score_detection(judge, explanation, fc))
    if "fuzzing" in scorers:
        out.scores.update(score_fuzzing(judge, explanation, fc, seed))
    return out
