"""Text corpora, packed into fixed-length token rows for language models: the packaged ones (in pip packages) and
the user's own files (a path, folder or glob: `anatomist.data.text_files`), streamed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from anatomist.core.errors import AnatomistError
from anatomist.core.packages import wiki_articles
from anatomist.core.progress import progress
from anatomist.core.text import pack_rows
from anatomist.data.text_files import TextFiles, read_text_source

CORPUS_HELP = ("packaged corpus name (wiki) or your own text: a .txt/.md/.jsonl/.parquet file, a folder or glob of "
               "them, or a datasets save_to_disk folder")
TEXT_FIELD_HELP = "the field (.jsonl) or column (.parquet, datasets folder) that holds the text"


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


def _looks_like_path(name: str) -> bool:
    """A corpus name with a path separator, a suffix or a glob is a path (reported as missing if it is not there)."""
    return name.startswith("hf:") or any(c in name for c in "/\\.*?[~")


CORPORA: dict[str, Callable[[], tuple[list[str], list[str]]]] = {"wiki": _wiki}


@cache
def _read(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    titles, texts = CORPORA[name]()
    return tuple(titles), tuple(texts)


@dataclass
class FileCorpus:
    """The user's own text on disk, read as a stream when tokenised (a 10 GB corpus is never held in memory)."""

    name: str
    files: TextFiles

    def tokenize(self, tokenizer: Any, seq_len: int, n_seqs: int | None = None, add_bos: bool = True) -> torch.Tensor:
        """As `Corpus.tokenize`, reading the files only as far as the rows need."""
        pieces = progress(self.files.pieces(), desc=f"tokenising {self.name}")
        return pack_rows(pieces, tokenizer, seq_len, n_seqs, add_bos, name=self.name)


def load_corpus(name: str = "wiki", text_field: str = "text", split: str = "train") -> Corpus | FileCorpus:
    """A packaged corpus by name, or the user's text by path (`anatomist.data.text_files`).

    Packaged: "wiki", 10,033 English Wikipedia lead summaries (CC BY-SA), sorted by title. A path: a .txt/.md file,
    a .jsonl or .parquet file (documents under `text_field`), a folder or glob of such files, or a folder saved by
    `datasets`' save_to_disk (`split` of a DatasetDict).
    """
    if name not in CORPORA:
        if not (_looks_like_path(name) or Path(name).exists()):
            raise AnatomistError(f"unknown corpus '{name}'; known corpora: {', '.join(CORPORA)}, or a path to "
                                 f"text files (.txt, .md, .jsonl, .parquet, a datasets folder)")
        return FileCorpus(name, read_text_source(name, text_field, split))
    titles, texts = _read(name)  # read once per process; each Corpus gets its own lists
    return Corpus(name, list(texts), list(titles))
