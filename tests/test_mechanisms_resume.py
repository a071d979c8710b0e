"""`anatomist run spd-toy|apd-toy|l3d-toy --resume` after SIGKILL ends where an uninterrupted run ends, exactly.

Each method runs in a subprocess that is killed as soon as its first checkpoint is on disk, is resumed
with `--resume`, and its final checkpoint and numbers are compared with an uninterrupted run of the
same config. The toy is the exact pentagon put into a temporary toy cache, so no toy is trained here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from anatomist.core.checkpoint import Checkpointer
from anatomist.core.io import load_json, load_tensors
from anatomist.core.paths import cache_dir
from anatomist.nets.toys import TrainedToy, config_hash
from anatomist.runs import load_run_config, run
from conftest import pentagon_tms

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 80
# numbers that measure the machine, not the result
TIMINGS = {"seconds", "steps_per_s", "out"}


@pytest.fixture
def pentagon_in_cache(tmp_cache: Path) -> None:
    model, cfg = pentagon_tms()
    TrainedToy(model, cfg, final_loss=0.0).save(cache_dir("toys", f"{cfg.name}-{config_hash(cfg)}"))


def sets(section: str) -> list[str]:
    """A short schedule with a checkpoint every few steps, so a kill lands between two of them."""
    return ["toy=tms-5-2", f"{section}.steps={STEPS}", f"{section}.batch_size=64", f"{section}.checkpoint_every=10",
            f"{section}.log_every=10"]


def command(kind: str, section: str, out: Path, *extra: str) -> list[str]:
    overrides = [arg for s in sets(section) for arg in ("--set", s)]
    return [sys.executable, "-m", "anatomist", "run", kind, *overrides, "--out", str(out), "--threads", "1", *extra]


def kill_after_first_checkpoint(cmd: list[str], out: Path, env: dict[str, str]) -> None:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((out / "checkpoints").glob("step_*/state.json")):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "exited"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def final_state(out: Path) -> dict[str, torch.Tensor]:
    ckpt = Checkpointer(out)
    assert ckpt.latest() == STEPS
    return load_tensors(ckpt.folder(STEPS) / "model.safetensors")


@pytest.mark.usefixtures("pentagon_in_cache")
@pytest.mark.parametrize(("kind", "section"), [
    ("spd-toy", "spd"),
    # APD and L3D resume through the same fit loop and checkpointer as SPD: their kill tests are the slow variants
    pytest.param("apd-toy", "apd", marks=pytest.mark.slow),
    pytest.param("l3d-toy", "l3d", marks=pytest.mark.slow),
])
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path: Path, kind: str, section: str) -> None:
    whole = run(load_run_config(kind, sets(section)), tmp_path / "whole", threads=1)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1",
           "ANATOMIST_PROGRESS": "0"}
    out = tmp_path / "killed"
    kill_after_first_checkpoint(command(kind, section, out), out, env)
    latest = Checkpointer(out).latest()
    assert latest is not None and latest < STEPS  # killed mid-run, not after it
    assert not (out / "metrics.json").exists()
    resumed = subprocess.run(command(kind, section, out, "--resume"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr

    a, b = final_state(tmp_path / "whole"), final_state(out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    numbers = load_json(out / "metrics.json")["numbers"]
    assert {k: v for k, v in numbers.items() if k not in TIMINGS} == \
        {k: v for k, v in whole.metrics.numbers.items() if k not in TIMINGS}
    assert load_json(out / "metrics.json")["tables"] == load_json(tmp_path / "whole" / "metrics.json")["tables"]
