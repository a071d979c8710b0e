"""The one place that sets torch's CPU thread count, and always puts it back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from anatomist.core.errors import AnatomistError


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run a block with `threads` CPU threads (0: leave torch's setting alone); the old setting returns on exit."""
    if threads < 0:
        raise AnatomistError(f"threads must be ≥ 0, got {threads}")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
