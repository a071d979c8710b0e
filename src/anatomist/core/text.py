"""Texts packed into fixed-length rows of token ids, the shape every language-model run reads."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch

from anatomist.core.errors import AnatomistError

# texts are tokenised this many at a time, so a request for a few rows reads only a few texts
_CHUNK = 64


@dataclass(frozen=True)
class Piece:
    """A document, or one part of a document too long to tokenise at once (`ends_document` False for every part
    but its last: the end-of-text token follows only the last)."""

    text: str
    ends_document: bool = True


def _token_ids(texts: Iterable[str | Piece], tokenizer: Any) -> Iterator[tuple[list[int], bool]]:
    """(token ids, ends a document) of each text, tokenised _CHUNK at a time from the stream."""
    stream = (t if isinstance(t, Piece) else Piece(t) for t in texts)
    while chunk := list(islice(stream, _CHUNK)):
        # verbose=False: texts longer than the model's context are fine here, we cut them into rows
        batch = tokenizer([p.text for p in chunk], add_special_tokens=False, verbose=False)
        yield from zip(batch["input_ids"], (p.ends_document for p in chunk), strict=True)


def pack_rows(texts: Iterable[str | Piece], tokenizer: Any, seq_len: int, n_seqs: int | None = None,
              add_bos: bool = True, name: str = "corpus") -> torch.Tensor:
    """Pack `texts`, each followed by EOS, into rows of `seq_len` token ids: LongTensor [n, seq_len].

    With `add_bos` (and a tokenizer that has a BOS token) every row starts with BOS, then `seq_len - 1`
    tokens of the stream; texts run on across row ends. Stops once `n_seqs` rows are made (None: every
    text); the last, partial row is dropped. `texts` is read as a stream, so only what the rows need is read.
    A tokenizer without an EOS token separates texts by its SEP token, if any. `tokenizer` is any Hugging Face
    tokenizer (called on a list of strings, returning "input_ids"); `name` names the texts in errors.
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
    for ids, ends_document in _token_ids(texts, tokenizer):
        stream.extend(ids)
        if sep is not None and ends_document:
            stream.append(sep)
        while len(stream) >= body and (n_seqs is None or len(rows) < n_seqs):
            rows.append(([bos] if bos is not None else []) + stream[:body])
            del stream[:body]
        if n_seqs is not None and len(rows) >= n_seqs:
            break
    if n_seqs is not None and len(rows) < n_seqs:
        raise AnatomistError(f"corpus '{name}' holds only {len(rows)} rows of {seq_len} tokens; {n_seqs} asked for")
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), seq_len)
