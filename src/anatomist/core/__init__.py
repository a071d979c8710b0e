"""Plumbing shared by every lens: configs, files, checkpoints, seeds, devices, progress."""

from anatomist.core.checkpoint import Checkpointer
from anatomist.core.config import Config
from anatomist.core.device import resolve_device
from anatomist.core.errors import AnatomistError
from anatomist.core.io import load_json, load_tensors, save_json, save_tensors
from anatomist.core.paths import cache_dir
from anatomist.core.progress import progress
from anatomist.core.seed import seed_everything

__all__ = [
    "AnatomistError",
    "Checkpointer",
    "Config",
    "cache_dir",
    "load_json",
    "load_tensors",
    "progress",
    "resolve_device",
    "save_json",
    "save_tensors",
    "seed_everything",
]
