"""Core plumbing: configs reject unknown keys by name, writes are atomic, checkpoints resume exactly."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import Field, ValidationError
from torch import nn

from anatomist.core import AnatomistError, Checkpointer, Config, load_tensors, save_json, save_tensors
from anatomist.core.device import resolve_device
from anatomist.core.seed import seed_everything


class Inner(Config):
    width: int = Field(4, description="hidden width")


class TrainConfig(Config):
    lr: float = Field(1e-3, description="learning rate")
    steps: int = Field(10, description="optimizer steps")
    inner: Inner = Field(default_factory=Inner, description="nested block")


def test_config_yaml_roundtrip(tmp_path: Path) -> None:
    cfg = TrainConfig(lr=0.5, steps=3)
    cfg.to_yaml(tmp_path / "c.yaml")
    assert TrainConfig.from_yaml(tmp_path / "c.yaml") == cfg
    with pytest.raises(ValidationError):  # frozen
        cfg.lr = 1.0  # type: ignore[misc]
    assert cfg.replace(steps=7).steps == 7


def test_config_mistyped_key_names_it(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("lr: 0.1\nstesp: 5\n")
    with pytest.raises(AnatomistError) as err:
        TrainConfig.from_yaml(path)
    msg = str(err.value)
    assert "unknown key 'stesp'" in msg and "did you mean 'steps'" in msg and str(path) in msg
    assert "\n" not in msg
    path.write_text("inner: {widht: 3}\n")
    with pytest.raises(AnatomistError, match=r"unknown key 'inner\.widht' \(did you mean 'width'\?\)"):
        TrainConfig.from_yaml(path)
    path.write_text("steps: many\n")
    with pytest.raises(AnatomistError, match="key 'steps'"):
        TrainConfig.from_yaml(path)


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    save_tensors(path, {"a": torch.ones(3)})
    with pytest.raises(AttributeError):
        save_tensors(path, {"a": "not a tensor"})  # type: ignore[dict-item]
    assert torch.equal(load_tensors(path)["a"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]  # no temp file left behind


def test_load_tensors_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_tensors(path, {"a": torch.ones(100)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AnatomistError, match=r"w\.safetensors: corrupted or truncated"):
        load_tensors(path)
    save_tensors(path, {"a": torch.ones(2)})
    with pytest.raises(AnatomistError, match=r"missing tensor key\(s\) \['b'\]"):
        load_tensors(path, required=["a", "b"])
    with pytest.raises(AnatomistError, match="file not found"):
        load_tensors(tmp_path / "nope.safetensors")


def test_shared_tensors_can_be_saved(tmp_path: Path) -> None:
    w = torch.randn(3, 3)
    save_tensors(tmp_path / "s.safetensors", {"a": w, "b": w, "c": w[0]})
    got = load_tensors(tmp_path / "s.safetensors")
    assert torch.equal(got["b"], w) and torch.equal(got["c"], w[0])


def test_save_json_is_valid(tmp_path: Path) -> None:
    save_json(tmp_path / "m.json", {"x": 1})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": 1}


def _train(model: nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
           gen: torch.Generator, steps: range) -> None:
    for _ in steps:
        x = torch.randn(8, 4, generator=gen)
        noise = torch.randn(8, 1) + random.random() + float(np.random.rand())  # global RNGs matter too
        loss = ((model(x) - noise) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _fresh() -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, torch.Generator]:
    gen = seed_everything(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)
    return model, opt, sched, gen


def test_checkpoint_resume_is_bit_exact(tmp_path: Path) -> None:
    model, opt, sched, gen = _fresh()
    _train(model, opt, sched, gen, range(20))
    reference = [p.detach().clone() for p in model.parameters()]

    model, opt, sched, gen = _fresh()
    _train(model, opt, sched, gen, range(8))
    ckpt = Checkpointer(tmp_path, keep=1)
    ckpt.save(8, model, opt, sched, generators={"data": gen}, extra={"note": "halfway"})
    _train(model, opt, sched, gen, range(3))  # work that is lost when the run dies

    model, opt, sched, gen = _fresh()
    seed_everything(123)  # a different process state; resume must restore it
    info = ckpt.load(model, opt, sched, generators={"data": gen})
    assert info == {"step": 8, "extra": {"note": "halfway"}}
    _train(model, opt, sched, gen, range(8, 20))
    for a, b in zip(reference, model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_checkpointer_keeps_newest(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    ckpt = Checkpointer(tmp_path, keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, model)
    assert ckpt.steps() == [2, 3]
    (tmp_path / "checkpoints" / ".tmp-step_00000004-1").mkdir()  # a run killed mid-save
    assert ckpt.latest() == 3
    with pytest.raises(AnatomistError, match="no checkpoint"):
        Checkpointer(tmp_path / "empty").load(model)


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(AnatomistError, match="no CUDA"):
            resolve_device("cuda")
