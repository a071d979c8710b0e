"""Atomic, resumable checkpoints: model + optimizer + scheduler + every RNG, without pickle.

Layout of a run folder's checkpoints (each step folder is written under a temporary name and
renamed into place and the rename made durable, so a killed run never leaves a half-written checkpoint
behind; the temporary folders of killed writes are removed when the next run starts, `prepare`):

    checkpoints/step_00001000/model.safetensors      model (or any module) state_dict
    checkpoints/step_00001000/optimizer.safetensors  optimizer tensors (moments, steps)
    checkpoints/step_00001000/rng.safetensors        torch RNG states and named generators
    checkpoints/step_00001000/state.json             step, optimizer structure, scheduler, numpy/python RNG, extra

A newest checkpoint that cannot be read (a truncated file: a disk filled up, a copy cut short) is skipped
with a warning on stderr, and the run resumes from the previous intact one.

Under torch.distributed only rank 0 writes (`save`, and the clean-up in `prepare`): data-parallel ranks hold the
same state after every step, so rank 0's checkpoint is every rank's, and every rank loads it to resume.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anatomist.core.distributed import is_main
from anatomist.core.errors import AnatomistError
from anatomist.core.io import fsync_dir, load_json, load_tensors, remove_temporaries, save_json, save_tensors
from anatomist.core.seed import rng_state, set_rng_state

_PREFIX = "step_"


class DamagedCheckpoint(AnatomistError):
    """A checkpoint file is missing, truncated or not what it should be."""


def _to_json(x: Any) -> Any:
    if isinstance(x, tuple | list):
        return [_to_json(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _to_json(v) for k, v in x.items()}
    if isinstance(x, torch.Tensor):
        return x.item()
    return x


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v
            else:
                rest.setdefault(str(pid), {})[k] = _to_json(v)
    return tensors, {"state": rest, "param_groups": _to_json(sd["param_groups"])}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], structure: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for pid, st in structure["state"].items():
        state.setdefault(int(pid), {}).update(st)
    groups = structure["param_groups"]
    for g in groups:
        for k in ("betas",):
            if k in g and isinstance(g[k], list):
                g[k] = tuple(g[k])
    return {"state": state, "param_groups": groups}


class Checkpointer:
    """Saves and restores training state in `run_dir/checkpoints`, keeping the newest `keep` steps."""

    def __init__(self, run_dir: str | Path, keep: int = 2):
        self.dir = Path(run_dir) / "checkpoints"
        self.keep = keep

    def steps(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        out = []
        for p in self.dir.iterdir():
            if p.is_dir() and p.name.startswith(_PREFIX) and (p / "state.json").is_file():
                out.append(int(p.name[len(_PREFIX) :]))
        return sorted(out)

    def latest(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def folder(self, step: int) -> Path:
        return self.dir / f"{_PREFIX}{step:08d}"

    def prepare(self, resume: bool) -> None:
        """As training starts: remove what killed checkpoint writes left, and refuse to start afresh over checkpoints.

        A fresh start would mix its checkpoints with the old run's (or, with `keep`, delete them): the caller
        continues with `resume=True`, or writes into another folder.
        """
        if is_main():
            remove_temporaries(self.dir)
        if not resume and self.steps():
            raise AnatomistError(f"{self.dir}: holds checkpoints of an earlier run (newest: step {self.latest()}); "
                                 "resume it, or start the new run in another folder")

    def load_model(self, model: nn.Module, step: int) -> None:
        """Only the model weights of a checkpoint (no optimizer, no RNG): e.g. to score a run in progress."""
        path = self.folder(step) / "model.safetensors"
        try:
            model.load_state_dict(load_tensors(path))
        except RuntimeError as e:
            raise AnatomistError(f"{path}: does not fit the model ({e})") from None

    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any | None = None,
        generators: dict[str, torch.Generator] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Write the checkpoint of `step` (rank 0 only: the other ranks return its folder and write nothing)."""
        final = self.folder(step)
        if not is_main():
            return final
        tmp = self.dir / f".tmp-{_PREFIX}{step:08d}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_tensors(tmp / "model.safetensors", model.state_dict())
        state: dict[str, Any] = {"step": step, "extra": extra or {}}
        if optimizer is not None:
            opt_tensors, state["optimizer"] = _flatten_optimizer(optimizer)
            save_tensors(tmp / "optimizer.safetensors", opt_tensors)
        if scheduler is not None:
            state["scheduler"] = _to_json(scheduler.state_dict())
        rng_tensors, state["rng"] = rng_state()
        for name, g in (generators or {}).items():
            rng_tensors[f"gen.{name}"] = g.get_state()
        save_tensors(tmp / "rng.safetensors", rng_tensors)
        save_json(tmp / "state.json", state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(self.dir)
        for old in self.steps()[: -self.keep] if self.keep > 0 else []:
            shutil.rmtree(self.folder(old), ignore_errors=True)
        return final

    def load(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any | None = None,
        generators: dict[str, torch.Generator] | None = None,
        step: int | None = None,
        max_step: int | None = None,
    ) -> dict[str, Any]:
        """Restore the newest (or a given) checkpoint in place; returns {'step', 'extra'}.

        Without `step`, a newest checkpoint that cannot be read is skipped (said on stderr) for the one before.
        `max_step` (the run's total steps) refuses a checkpoint past it: resuming there would relabel the run.
        """
        steps = self.steps() if step is None else [step]
        if not steps:
            raise AnatomistError(f"{self.dir}: no checkpoint to resume from")
        if max_step is not None and steps[-1] > max_step:
            raise AnatomistError(f"{self.folder(steps[-1])}: the run is already at step {steps[-1]}, past the "
                                 f"{max_step} steps asked for; resume with at least {steps[-1]} steps")
        *older, newest = steps
        while True:
            try:
                files = self._read(newest, optimizer is not None)
            except DamagedCheckpoint as e:
                if not older:
                    raise
                print(f"warning: {e}; resuming from step {older[-1]} instead", file=sys.stderr, flush=True)
                newest = older.pop()
                continue
            return self._restore(newest, files, model, optimizer, scheduler, generators)

    def _read(self, step: int, with_optimizer: bool) -> dict[str, Any]:
        """Every file of a checkpoint, read before anything is restored (a damaged one leaves the model untouched)."""
        folder = self.folder(step)
        try:
            return {"state": load_json(folder / "state.json"), "model": load_tensors(folder / "model.safetensors"),
                    "optimizer": load_tensors(folder / "optimizer.safetensors") if with_optimizer else {},
                    "rng": load_tensors(folder / "rng.safetensors")}
        except AnatomistError as e:
            raise DamagedCheckpoint(f"checkpoint step {step} cannot be read: {e}") from None

    def _restore(
        self,
        step: int,
        files: dict[str, Any],
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        scheduler: Any | None,
        generators: dict[str, torch.Generator] | None,
    ) -> dict[str, Any]:
        folder, state, rng = self.folder(step), files["state"], files["rng"]
        try:
            model.load_state_dict(files["model"])
        except RuntimeError as e:
            raise AnatomistError(f"{folder / 'model.safetensors'}: does not fit the model ({e})") from None
        if optimizer is not None:
            optimizer.load_state_dict(_unflatten_optimizer(files["optimizer"], state["optimizer"]))
        if scheduler is not None and "scheduler" in state:
            scheduler.load_state_dict(state["scheduler"])
        set_rng_state({k: v for k, v in rng.items() if not k.startswith("gen.")}, state["rng"])
        for name, g in (generators or {}).items():
            if f"gen.{name}" not in rng:
                raise AnatomistError(f"{folder / 'rng.safetensors'}: no state for generator '{name}'")
            g.set_state(rng[f"gen.{name}"])
        return {"step": state["step"], "extra": state["extra"]}
