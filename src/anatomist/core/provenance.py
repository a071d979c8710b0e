"""provenance.json: what a run folder was made from, so an audit can be checked and repeated.

A record names the model(s) (name + SHA-256 of the weights), the data (name, hash, number of tokens or
examples), the full config, the seed, the package versions, and which kinds of access the analysis used:
only the model's outputs, its activations, its weights, its gradients, or its training data. Each
run-producing entry point writes one with `write_provenance(run_dir, ...)`; `anatomist report` shows it.
"""

from __future__ import annotations

import hashlib
import platform
import sys
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel
from torch import nn

from anatomist.core.errors import AnatomistError
from anatomist.core.io import load_json, save_json

PROVENANCE = "provenance.json"
FORMAT = "anatomist-provenance/1"
Access = Literal["outputs", "activations", "weights", "gradients", "training_data"]
ACCESS: tuple[str, ...] = ("outputs", "activations", "weights", "gradients", "training_data")
_PACKAGES = ("anatomist", "torch", "numpy", "transformers", "safetensors", "pydantic", "scikit-learn", "matplotlib")


def tensor_hash(*tensors: torch.Tensor) -> str:
    """SHA-256 of tensors' dtypes, shapes and bytes (exact: any changed value changes it)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)  # the bytes in place, no copy
    return h.hexdigest()


def weights_hash(model: nn.Module) -> str:
    """SHA-256 over every parameter and buffer of `model`, in state_dict order, names included."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor_hash(t).encode())
    return h.hexdigest()


def model_record(name: str, model: nn.Module) -> dict[str, Any]:
    n_params = sum(p.numel() for p in model.parameters())
    return {"name": name, "weights_sha256": weights_hash(model), "parameters": int(n_params)}


def data_record(name: str, data: torch.Tensor | None = None, *, n_tokens: int | None = None,
                n_examples: int | None = None, digest: str | None = None) -> dict[str, Any]:
    """A data set: its name, a hash (of `data` when given, else `digest`) and how many tokens/examples were used."""
    rec: dict[str, Any] = {"name": name, "sha256": tensor_hash(data) if data is not None else digest}
    if n_tokens is not None:
        rec["n_tokens"] = int(n_tokens)
    if n_examples is not None:
        rec["n_examples"] = int(n_examples)
    return rec


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _config_dict(config: BaseModel | Mapping[str, Any] | None) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, BaseModel):
        return config.model_dump(mode="json")
    return dict(config)


def write_provenance(
    run_dir: str | Path,
    *,
    models: Iterable[dict[str, Any]] = (),
    data: Iterable[dict[str, Any]] = (),
    config: BaseModel | Mapping[str, Any] | None = None,
    seed: int | None = None,
    access: Iterable[str] = (),
    parts: Iterable[str] = (),
) -> Path:
    """Write `run_dir/provenance.json`; `parts` name sub-folders that hold their own records (e.g. demo steps)."""
    access = sorted(set(access), key=ACCESS.index) if set(access) <= set(ACCESS) else list(access)
    bad = [a for a in access if a not in ACCESS]
    if bad:
        raise AnatomistError(f"provenance: unknown access kind(s) {bad}; known: {list(ACCESS)}")
    record = {
        "format": FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "models": list(models),
        "data": list(data),
        "config": _config_dict(config),
        "seed": seed,
        "access": access,
        "packages": package_versions(),
        "parts": list(parts),
    }
    path = Path(run_dir) / PROVENANCE
    save_json(path, record)
    return path


def read_provenance(run_dir: str | Path) -> dict[str, Any]:
    """The record of `run_dir`; an error naming the file when it is missing or not a provenance record."""
    path = Path(run_dir) / PROVENANCE
    if not path.is_file():
        raise AnatomistError(f"{path}: missing (the run did not record its provenance)")
    rec = load_json(path)
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise AnatomistError(f"{path}: not an anatomist provenance record (format {FORMAT} expected)")
    return rec


def collect_parts(run_dir: str | Path) -> list[str]:
    """Sub-folders (relative paths) of `run_dir` that hold their own provenance.json."""
    root = Path(run_dir)
    return sorted(str(p.parent.relative_to(root)) for p in root.rglob(PROVENANCE) if p.parent != root)
