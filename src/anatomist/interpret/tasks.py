"""Tasks for causal localisation: pairs of prompts (clean, counterfactual) and metrics on the last position.

A task is a behaviour of a language model at the last token of a prompt, written as pairs of prompts of equal
token length: the clean prompt, where the model shows the behaviour, and a counterfactual that differs in a few
tokens and changes it. Patching a site's value (or parts of it) from the counterfactual run into the clean run and
watching the metric move localises the behaviour (activation patching, Vig et al. 2020; Meng et al. 2022).

The metrics, read at the last position of the clean prompt:

- logit difference: logit(correct answer) - logit(wrong answer) of the clean prompt (for IOI: IO - S);
- KL(patched || counterfactual) of the next-token distributions: how far the patched run still is from the
  counterfactual's prediction (it is KL(clean || counterfactual) with no patch and 0 with the whole site patched);
- the fraction of the behaviour change a patch makes, (m(patched) - m(clean)) / (m(counterfactual) - m(clean)):
  0 with nothing patched, 1 when the patch moves the metric all the way to the counterfactual's value.

The offline IOI task (indirect object identification, Wang et al. 2022, "Interpretability in the Wild"), as
Cunningham et al. 2023 ("Sparse Autoencoders Find Highly Interpretable Features in Language Models", section 5) use
it to compare dictionaries: "When Mary and John went to the store, John gave a drink to" -> " Mary". Names are
single tokens with a leading space, so every clean/counterfactual pair tokenizes to the same length. Two orders
(ABBA: the indirect object named first, BABA: the subject first) and two counterfactuals:

- swap: the name at S2 becomes the indirect object ("..., Mary gave a drink to"), so the answer flips to " John"
  and the logit difference IO - S of the clean names changes sign;
- fresh: both names replaced by an unrelated pair everywhere, so the clean names' difference falls to about 0.

Users bring their own task by subclassing `Task` (`make_pairs`, and `metric` for something other than the logit
difference), or with `PairsTask` over text records {clean, counterfactual, correct, wrong}.
"""

from __future__ import annotations

import json
import random
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from anatomist.core.errors import AnatomistError
from anatomist.evaluate.metrics import kl_div

Counterfactual = Literal["swap", "fresh"]
Order = Literal["abba", "baba", "both"]

# Sentences where SmolLM2-135M does IOI well (logit difference IO - S about 3-6 with a BOS token). {A} is named
# first, {B} second, {S} is the subject repeated at S2; the indirect object is the name that is not repeated.
IOI_TEMPLATES: tuple[str, ...] = (
    "When {A} and {B} went to the store, {S} gave a drink to",
    "When {A} and {B} went to the park, {S} gave a ball to",
    "Then, {A} and {B} had a long argument, and afterwards {S} said to",
    "After {A} and {B} went to the office, {S} handed a letter to",
    "While {A} and {B} were working at the hospital, {S} gave a book to",
    "When {A} and {B} got a snack at the cafe, {S} decided to give it to",
    "After lunch, {A} and {B} went to the beach. {S} threw a ball to",
    "When {A} and {B} visited the museum, {S} showed a painting to",
)

# Common first names that are not also common words (no "Will", "Rose", "Mark").
IOI_NAMES: tuple[str, ...] = (
    "Mary", "John", "Tom", "James", "Dan", "Martin", "Amy", "Paul", "Kate", "Anne", "Lisa", "Jack", "Sam", "Ben",
    "Emma", "Alice", "Bob", "David", "Sarah", "Laura", "Mike", "Peter", "Jane", "Chris", "Susan", "Tim", "Adam",
    "Eric", "Ryan", "Luke", "Alex", "Steve", "Kevin", "Jason", "Emily", "Anna", "Claire", "Helen", "Joe", "Lucy",
)


@dataclass(frozen=True)
class PromptPair:
    """One clean prompt and its counterfactual, as token ids of equal length, and the clean prompt's answers."""

    clean: Tensor  # [seq] long
    counterfactual: Tensor  # [seq] long
    correct: int  # token id of the clean prompt's answer (IOI: the indirect object)
    wrong: int  # token id of the competing answer (IOI: the subject)
    text: str = ""  # the clean prompt
    counterfactual_text: str = ""


@dataclass(frozen=True)
class PairBatch:
    """Pairs stacked and right-padded: clean and counterfactual ids [b, seq], each prompt's length [b], and the
    answers [b, 2] (correct, wrong). Padding sits after a prompt's last token, so a causal model's values at the
    prompt's own positions do not see it."""

    clean: Tensor
    counterfactual: Tensor
    lengths: Tensor
    answers: Tensor
    index: Tensor  # [b] positions of these pairs in the task's list

    def __len__(self) -> int:
        return len(self.clean)

    def rows(self, rows: Tensor) -> PairBatch:
        """The sub-batch of the given rows."""
        return PairBatch(self.clean[rows], self.counterfactual[rows], self.lengths[rows], self.answers[rows],
                         self.index[rows.cpu()])

    def to(self, device: torch.device | str) -> PairBatch:
        return PairBatch(self.clean.to(device), self.counterfactual.to(device), self.lengths.to(device),
                         self.answers.to(device), self.index)


def _padded(rows: Sequence[Tensor], pad: int) -> Tensor:
    out = torch.full((len(rows), max(len(r) for r in rows)), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return out


def batches(pairs: Sequence[PromptPair], batch_size: int, pad: int = 0) -> Iterator[PairBatch]:
    """The pairs in batches, shortest first (little padding), right-padded with token `pad`."""
    if batch_size < 1:
        raise AnatomistError(f"batch_size must be at least 1, got {batch_size}")
    by_length = sorted(range(len(pairs)), key=lambda i: (len(pairs[i].clean), i))
    for start in range(0, len(by_length), batch_size):
        members = by_length[start:start + batch_size]
        chunk = [pairs[i] for i in members]
        yield PairBatch(_padded([p.clean for p in chunk], pad), _padded([p.counterfactual for p in chunk], pad),
                        torch.tensor([len(p.clean) for p in chunk]),
                        torch.tensor([[p.correct, p.wrong] for p in chunk]), torch.tensor(members))


def last_position(logits: Tensor, lengths: Tensor) -> Tensor:
    """Each prompt's logits at its own last token [b, vocab] from a padded batch's logits [b, seq, vocab]."""
    return logits[torch.arange(len(logits), device=logits.device), lengths.to(logits.device) - 1]


def logit_diff(last_logits: Tensor, answers: Tensor) -> Tensor:
    """logit(correct) - logit(wrong) per prompt: last_logits [b, vocab], answers [b, 2] -> [b]."""
    picked = last_logits.float().gather(-1, answers.to(last_logits.device))
    return picked[:, 0] - picked[:, 1]


def kl_to(last_logits: Tensor, target_logits: Tensor) -> Tensor:
    """KL(last || target) of the next-token distributions per prompt [b], in nats."""
    return kl_div(last_logits, target_logits)


def fraction_of_change(patched: float, clean: float, counterfactual: float) -> float:
    """(patched - clean) / (counterfactual - clean): 0 at the clean value, 1 at the counterfactual's; NaN when the
    counterfactual does not change the metric."""
    gap = counterfactual - clean
    return (patched - clean) / gap if gap != 0 else float("nan")


class Task(ABC):
    """A behaviour to localise: prompt pairs, and a per-prompt metric of the last position's logits."""

    name: str = "task"

    @abstractmethod
    def make_pairs(self, tokenizer: Any) -> list[PromptPair]:
        """The clean/counterfactual pairs, tokenized (each pair of one length; `check_pairs` says so)."""

    def metric(self, last_logits: Tensor, batch: PairBatch) -> Tensor:
        """The behaviour per prompt [b] from the last position's logits [b, vocab]; default: the logit difference."""
        return logit_diff(last_logits, batch.answers)


def encode(tokenizer: Any, text: str, bos: bool) -> Tensor:
    """A prompt's token ids [seq]: the tokenizer's BOS first when `bos` (as the corpus rows dictionaries train on)."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if bos and getattr(tokenizer, "bos_token_id", None) is not None:
        ids = [tokenizer.bos_token_id, *ids]
    if not ids:
        raise AnatomistError(f"prompt {text!r} tokenizes to no tokens")
    return torch.tensor(ids, dtype=torch.long)


def single_token(tokenizer: Any, word: str) -> int:
    """The id of `word` (with its leading space) if it is one token; an error naming it otherwise."""
    ids = list(tokenizer(word, add_special_tokens=False)["input_ids"])
    if len(ids) != 1:
        raise AnatomistError(f"answer {word!r} is {len(ids)} tokens for this tokenizer; answers must be one token")
    return int(ids[0])


def check_pairs(pairs: Sequence[PromptPair]) -> None:
    """Every pair's prompts have one length (patching aligns positions); an error naming the first that does not."""
    if not pairs:
        raise AnatomistError("the task made no prompt pairs")
    for i, p in enumerate(pairs):
        if p.clean.shape != p.counterfactual.shape:
            raise AnatomistError(
                f"pair {i}: clean prompt {p.text!r} has {len(p.clean)} tokens, counterfactual "
                f"{p.counterfactual_text!r} has {len(p.counterfactual)}; a pair's prompts must tokenize to one length"
            )


def make_pair(tokenizer: Any, clean: str, counterfactual: str, correct: str, wrong: str, bos: bool) -> PromptPair:
    return PromptPair(encode(tokenizer, clean, bos), encode(tokenizer, counterfactual, bos),
                      single_token(tokenizer, correct), single_token(tokenizer, wrong), clean, counterfactual)


class IOITask(Task):
    """Indirect object identification: "When Mary and John went to the store, John gave a drink to" -> " Mary"."""

    name = "ioi"

    def __init__(self, n: int = 64, counterfactual: Counterfactual = "swap", order: Order = "both", seed: int = 0,
                 templates: Sequence[str] = IOI_TEMPLATES, names: Sequence[str] = IOI_NAMES, bos: bool = True):
        if counterfactual not in ("swap", "fresh"):
            raise AnatomistError(f"IOI counterfactual must be 'swap' or 'fresh', got {counterfactual!r}")
        if order not in ("abba", "baba", "both"):
            raise AnatomistError(f"IOI order must be 'abba', 'baba' or 'both', got {order!r}")
        if len(set(names)) < 4:
            raise AnatomistError(f"IOI needs at least 4 distinct names (two per prompt, two fresh), got {len(names)}")
        for t in templates:
            if any(f"{{{k}}}" not in t for k in "ABS"):
                raise AnatomistError(f"IOI template {t!r} must hold {{A}}, {{B}} and {{S}}")
        self.n, self.counterfactual, self.order, self.seed = n, counterfactual, order, seed
        self.templates, self.names, self.bos = tuple(templates), tuple(dict.fromkeys(names)), bos

    def make_pairs(self, tokenizer: Any) -> list[PromptPair]:
        for name in self.names:
            single_token(tokenizer, f" {name}")  # fail on the name, before any prompt
        rng = random.Random(self.seed)
        pairs = [self._pair(tokenizer, rng, i) for i in range(self.n)]
        check_pairs(pairs)
        return pairs

    def _pair(self, tokenizer: Any, rng: random.Random, i: int) -> PromptPair:
        template = self.templates[i % len(self.templates)]
        io, s, io_new, s_new = rng.sample(self.names, 4)
        abba = self.order == "abba" or (self.order == "both" and i % 2 == 0)
        clean = self.fill(template, io, s, s, abba)
        if self.counterfactual == "swap":  # S2 names the indirect object: the answer flips to the subject
            cf = self.fill(template, io, s, io, abba)
        else:
            cf = self.fill(template, io_new, s_new, s_new, abba)
        return make_pair(tokenizer, clean, cf, f" {io}", f" {s}", self.bos)

    @staticmethod
    def fill(template: str, io: str, s: str, s2: str, abba: bool) -> str:
        """The template with the indirect object and subject in ABBA (IO first) or BABA order, `s2` at S2."""
        first, second = (io, s) if abba else (s, io)
        return template.format(A=first, B=second, S=s2)


class PairsTask(Task):
    """A user's task as text records {clean, counterfactual, correct, wrong} (answers with their leading space)."""

    name = "pairs"

    def __init__(self, records: Sequence[dict[str, str]], bos: bool = True, source: str = "records"):
        keys = ("clean", "counterfactual", "correct", "wrong")
        for i, r in enumerate(records):
            if not isinstance(r, dict):
                raise AnatomistError(f"{source}: record {i} is a {type(r).__name__}, not a mapping of {list(keys)}")
            missing = [k for k in keys if not isinstance(r.get(k), str)]
            if missing:
                raise AnatomistError(f"{source}: record {i} lacks text key(s) {missing}; each needs {list(keys)}")
        self.records, self.bos, self.source = list(records), bos, source

    @classmethod
    def from_jsonl(cls, path: str | Path, bos: bool = True) -> PairsTask:
        """One JSON object per line of `path`."""
        file = Path(path)
        if not file.is_file():
            raise AnatomistError(f"{file}: task file not found")
        records = []
        for number, line in enumerate(file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise AnatomistError(f"{file}: line {number} is not JSON ({e.msg})") from None
        return cls(records, bos, source=str(file))

    def make_pairs(self, tokenizer: Any) -> list[PromptPair]:
        pairs = [make_pair(tokenizer, r["clean"], r["counterfactual"], r["correct"], r["wrong"], self.bos)
                 for r in self.records]
        check_pairs(pairs)
        return pairs
