"""Files users can trust: safetensors for tensors, JSON for metadata, every write atomic.

An atomic write goes to a temporary file in the same folder and is renamed over the target,
so a crash leaves either the old file or the new one, never half of either.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from anatomist.core.errors import AnatomistError


def umask() -> int:
    """The process's umask: from /proc on Linux (no change, so safe beside other threads), else set and set back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file 0600 (and a writer may recreate it); a plain open() gives 0666 less the umask,
        # which users expect: a report copied to a shared server must stay readable
        os.chmod(tmp, 0o666 & ~umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: str | Path) -> None:
    """Make renames in `folder` durable: without it a power loss right after os.replace can undo the rename."""
    if os.name != "posix":  # Windows cannot open a folder for fsync; its renames are journaled
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_temporary(name: str) -> bool:
    """Names of our writes in progress: `.x.json.abc123.tmp` (files), `.tmp-step_N-PID`, `.sae.tmp-PID` (folders)."""
    return name.startswith(".") and (name.endswith(".tmp") or ".tmp-" in name or ".old-" in name)


def remove_temporaries(folder: str | Path) -> list[str]:
    """Delete what killed writes left in `folder` (not below it); returns the names removed.

    Call it only when no other process writes into the folder (as a run starts).
    """
    folder = Path(folder)
    removed = []
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        if is_temporary(p.name):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float (nan, inf) replaced by None, so strict JSON parsers can read it.

    Tuples become lists (as json would write them); other values are returned as they are.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """json.dumps that never writes bare NaN/Infinity (non-standard JSON): non-finite floats become null."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def save_json(path: str | Path, obj: Any) -> None:
    """`obj` as indented JSON, atomically; non-finite floats are written as null (see `dumps`)."""
    atomic_write_text(path, dumps(obj, indent=2, sort_keys=False) + "\n")


def load_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise AnatomistError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise AnatomistError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def save_tensors(
    path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Save tensors as safetensors, atomically. Tensors are made contiguous and moved to CPU."""
    # clone: safetensors refuses tensors that share storage (tied weights, views)
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    _atomic(Path(path), lambda tmp: save_file(flat, tmp, metadata=metadata))


def load_tensors(
    path: str | Path, device: str | torch.device = "cpu", required: list[str] | None = None, only: bool = False
) -> dict[str, torch.Tensor]:
    """Load a safetensors file (with `only`, just the `required` tensors: the others are never read from disk);
    a missing, truncated or corrupted file, or a missing key, names the file."""
    path = Path(path)
    if not path.is_file():
        raise AnatomistError(f"{path}: file not found")
    try:
        if only and required is not None:
            out = _read_some(path, device, required)
        else:
            out = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise AnatomistError(f"{path}: corrupted or truncated safetensors file ({e})") from None
    missing = [k for k in (required or []) if k not in out]
    if missing:
        raise AnatomistError(f"{path}: missing tensor key(s) {missing}; found {sorted(out)}")
    return out


def _read_some(path: Path, device: str | torch.device, keys: list[str]) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        stored = set(f.keys())  # a missing key is reported by the caller, with the file's name
        return {k: f.get_tensor(k) for k in keys if k in stored}
