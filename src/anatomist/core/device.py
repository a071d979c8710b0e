"""Device selection: 'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when present)."""

from __future__ import annotations

import torch

from anatomist.core.errors import AnatomistError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AnatomistError(f"device '{name}' asked for, but this machine has no CUDA device (use 'cpu' or 'auto')")
    try:
        return torch.device(name)
    except RuntimeError:
        raise AnatomistError(f"unknown device '{name}' (use 'cpu', 'cuda', 'cuda:N' or 'auto')") from None
