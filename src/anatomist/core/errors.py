"""One error type for every bad input a user can give us; the CLI prints its message as one line."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AnatomistError(Exception):
    """A user-facing error: its message names the file, key, site or shape that is wrong."""


def nearest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The closest valid names to a wrong one (for 'did you mean' hints)."""
    cands = list(candidates)
    close = difflib.get_close_matches(name, cands, n=n, cutoff=0.5)
    if close:
        return close
    # fall back on shared suffix/prefix so 'layers.99' still suggests 'layers.9'
    return [c for c in cands if c.startswith(name.rsplit(".", 1)[0])][:n]
