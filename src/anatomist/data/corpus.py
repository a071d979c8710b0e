"""Text corpora that ship in pip packages, packed into fixed-length token rows for language models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch

from anatomist.core.errors import AnatomistError
from anatomist.core.packages import wiki_articles
from anatomist.core.text import pack_rows


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
        are made (None: the whole corpus); the last, partial row is dropped (`core.text.pack_rows`).
        """
        return pack_rows(self.texts, tokenizer, seq_len, n_seqs, add_bos, name=self.name)


def _wiki() -> tuple[list[str], list[str]]:
    titles, texts = wiki_articles()
    return list(titles), list(texts)


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
