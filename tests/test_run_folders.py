"""Nothing lost, nothing mislabelled (issue 21): one rule for used run folders, failed starts that lock nothing,
checkpoints that survive kills and damage, and progress that a log sees.

Training runs here are `spd-toy` on the exact pentagon put into a temporary toy cache (no toy is trained), and
the non-training kind is `toy-train` on a few steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from anatomist.core.checkpoint import Checkpointer
from anatomist.core.errors import AnatomistError
from anatomist.core.io import load_json, load_tensors
from anatomist.core.paths import cache_dir
from anatomist.core.progress import lines_to_log_only
from anatomist.mechanisms import spd
from anatomist.mechanisms.spd import SPDConfig
from anatomist.nets.toys import TrainedToy, config_hash
from anatomist.runs import load_run_config, run
from conftest import pentagon_tms

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 40


@pytest.fixture
def pentagon_in_cache(tmp_cache: Path) -> None:
    model, cfg = pentagon_tms()
    TrainedToy(model, cfg, final_loss=0.0).save(cache_dir("toys", f"{cfg.name}-{config_hash(cfg)}"))


def spd_sets(steps: int = STEPS, seed: int = 0) -> list[str]:
    return ["toy=tms-5-2", f"spd.steps={steps}", "spd.batch_size=64", "spd.checkpoint_every=10", "spd.log_every=10",
            f"spd.seed={seed}"]


def temporaries(folder: Path) -> list[Path]:
    """Anything a write in progress names `.something.tmp...` (files and folders, at any depth)."""
    return [p for p in folder.rglob(".*") if ".tmp" in p.name]


# --- one rule for a used folder -----------------------------------------------------------------


@pytest.mark.usefixtures("pentagon_in_cache")
def test_a_used_training_folder_is_resumed_or_refused_never_restarted(tmp_path: Path) -> None:
    out = tmp_path / "spd"
    first = run(load_run_config("spd-toy", spd_sets()), out, threads=1)
    weights = load_tensors(Checkpointer(out).folder(STEPS) / "model.safetensors")
    with pytest.raises(AnatomistError, match=r"holds a 'spd-toy' run already.*--resume.*another --out"):
        run(load_run_config("spd-toy", spd_sets()), out, threads=1)
    with pytest.raises(AnatomistError, match=r"differs in spd\.seed"):  # the refusal names what differs
        run(load_run_config("spd-toy", spd_sets(seed=5)), out, threads=1)
    with pytest.raises(AnatomistError, match=r"--resume with a config that differs in spd\.seed"):
        run(load_run_config("spd-toy", spd_sets(seed=5)), out, resume=True, threads=1)
    # nothing was relabelled or replaced
    assert yaml.safe_load((out / "config.yaml").read_text())["spd"]["seed"] == 0
    assert load_json(out / "metrics.json")["numbers"]["seed"] == 0
    after = load_tensors(Checkpointer(out).folder(STEPS) / "model.safetensors")
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    assert first.metrics["steps"] == STEPS


def test_a_used_folder_of_a_kind_that_does_not_train_is_refused_with_where_to_go(tmp_path: Path) -> None:
    run(load_run_config("toy-train", ["steps=5"]), tmp_path / "toy")
    with pytest.raises(AnatomistError, match=r"holds a finished 'toy-train' run already.*another --out"):
        run(load_run_config("toy-train", ["steps=5"]), tmp_path / "toy")


def test_runs_made_of_runs_rerun_their_parts(tmp_path: Path) -> None:
    """run_or_continue (the demo's and sweeps') replaces a finished non-training part and keeps working."""
    from anatomist.runs.base import run_or_continue

    cfg = load_run_config("toy-train", ["steps=5"])
    run_or_continue(cfg, tmp_path / "part")
    run_or_continue(cfg, tmp_path / "part")  # the same config: run again
    run_or_continue(cfg.replace(steps=6), tmp_path / "part")  # another config: replaced
    assert yaml.safe_load((tmp_path / "part" / "config.yaml").read_text())["steps"] == 6
    assert load_json(tmp_path / "part" / "provenance.json")["config"]["steps"] == 6


@pytest.mark.usefixtures("pentagon_in_cache")
def test_a_start_that_fails_locks_nothing(tmp_path: Path) -> None:
    """A typo found by the kind (not by the config) fails the start; the folder takes the corrected run."""
    bad = load_run_config("spd-toy", ["toy=tms-5-2", "spd.steps=4", "targets=[linera]"])
    with pytest.raises(AnatomistError, match="linera"):
        run(bad, tmp_path / "r", threads=1)
    assert not (tmp_path / "r" / "config.yaml").exists()
    with pytest.raises(AnatomistError, match="nothing to resume"):
        run(bad, tmp_path / "r", resume=True, threads=1)


@pytest.mark.usefixtures("pentagon_in_cache")
def test_a_corrected_rerun_after_a_failed_start_runs(tmp_path: Path) -> None:
    with pytest.raises(AnatomistError, match="linera"):
        run(load_run_config("spd-toy", ["toy=tms-5-2", "spd.steps=4", "targets=[linera]"]), tmp_path, threads=1)
    (tmp_path / "config.yaml").write_text("kind: spd-toy\n")  # or what a start killed before any checkpoint left
    result = run(load_run_config("spd-toy", ["toy=tms-5-2", "spd.steps=4"]), tmp_path, threads=1)
    assert result.metrics["steps"] == 4


# --- checkpoints ----------------------------------------------------------------------------------


class Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(3, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.a(x))


def decompose(run_dir: Path, resume: bool, steps: int = 6) -> spd.SPDDecomposition:
    cfg = SPDConfig(C=4, steps=steps, batch_size=16, lr=1e-2, checkpoint_every=3, log_every=3)
    g = torch.Generator().manual_seed(1)
    data = (torch.rand(16, 3, generator=g) for _ in range(10_000))
    return spd.decompose(Two(), data, ["a"], cfg, run_dir=run_dir, resume=resume, generators={"d": g})


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    full = decompose(tmp_path / "a", resume=False)
    ckpt = Checkpointer(tmp_path / "a")
    assert ckpt.steps() == [3, 6]
    newest = ckpt.folder(6) / "optimizer.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a copy cut short
    resumed = decompose(tmp_path / "a", resume=True)
    assert "checkpoint step 6 cannot be read" in capsys.readouterr().err
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    load_tensors(ckpt.folder(6) / "optimizer.safetensors")  # step 6 written anew, whole


def test_only_damaged_checkpoints_is_an_error_naming_the_file(tmp_path: Path) -> None:
    decompose(tmp_path / "a", resume=False, steps=3)
    path = Checkpointer(tmp_path / "a").folder(3) / "model.safetensors"
    path.write_bytes(b"cut")
    with pytest.raises(AnatomistError, match="model.safetensors"):
        decompose(tmp_path / "a", resume=True)


def test_fewer_steps_than_the_checkpoint_is_refused(tmp_path: Path) -> None:
    decompose(tmp_path / "a", resume=False, steps=6)
    with pytest.raises(AnatomistError, match="already at step 6, past the 3 steps"):
        decompose(tmp_path / "a", resume=True, steps=3)


def test_a_fresh_start_over_checkpoints_is_refused_by_the_loop_too(tmp_path: Path) -> None:
    decompose(tmp_path / "a", resume=False, steps=3)
    with pytest.raises(AnatomistError, match="holds checkpoints of an earlier run"):
        decompose(tmp_path / "a", resume=False, steps=3)


def test_temporaries_of_killed_writes_go_at_the_next_start_and_renames_are_synced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = Checkpointer(tmp_path)
    orphan = ckpt.dir / ".tmp-step_00000003-4242"
    orphan.mkdir(parents=True)
    (orphan / ".model.safetensors.x1y2.tmp").write_bytes(b"half")
    synced: list[tuple[Path, bool]] = []
    import anatomist.core.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "fsync_dir", lambda p: synced.append((Path(p), ckpt.folder(3).is_dir())))
    decompose(tmp_path, resume=True, steps=3)
    assert not orphan.exists() and ckpt.steps() == [3]
    assert (ckpt.dir, True) in synced  # the checkpoints folder synced once the step's folder was renamed in


# --- progress -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("pentagon_in_cache")
def test_training_reports_progress_lines_and_metrics_jsonl_off_a_terminal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANATOMIST_PROGRESS", raising=False)
    run(load_run_config("spd-toy", spd_sets(steps=20)), tmp_path / "a", threads=1)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("SPD step")]
    assert len(lines) == 2 and "SPD step 20/20" in lines[1] and "steps/s" in lines[1] and "ETA" in lines[1]
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20]
    assert {"loss", "faithfulness", "steps_per_s", "eta_s"} <= set(records[0]) and records[-1]["eta_s"] == 0
    monkeypatch.setenv("ANATOMIST_PROGRESS", "0")
    run(load_run_config("spd-toy", spd_sets(steps=20)), tmp_path / "b", threads=1)
    assert "SPD step" not in capsys.readouterr().err
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 2  # the file is written all the same
    monkeypatch.delenv("ANATOMIST_PROGRESS")
    with lines_to_log_only():  # the demo's way: its own line per part, the step records in each part's file
        run(load_run_config("spd-toy", spd_sets(steps=20)), tmp_path / "c", threads=1)
    assert "SPD step" not in capsys.readouterr().err
    assert len((tmp_path / "c" / "metrics.jsonl").read_text().splitlines()) == 2


# --- fault injection ------------------------------------------------------------------------------

# SIGKILL at a chosen point of the Nth checkpoint write of this process (FAULT="point:N"):
#   tensor - halfway through writing a tensor file (a partial temporary file in the temporary step folder)
#   state  - with the tensors written, before state.json and the rename
#   after  - once the checkpoint is renamed into place, before older ones are pruned
FAULTY_RUN = """
import os, signal, sys
from pathlib import Path
import anatomist.core.checkpoint as checkpoint
point, nth = os.environ["FAULT"].split(":")
count = {"saves": 0, "tensors": 0}
save, save_tensors, save_json = checkpoint.Checkpointer.save, checkpoint.save_tensors, checkpoint.save_json
def die():
    os.kill(os.getpid(), signal.SIGKILL)
def counted_save(self, step, *args, **kwargs):
    count["saves"] += 1
    path = save(self, step, *args, **kwargs)
    if point == "after" and count["saves"] == int(nth):
        die()
    return path
def faulty_tensors(path, tensors, *args, **kwargs):
    if point == "tensor" and count["saves"] == int(nth):
        Path(path).parent.joinpath(f".{Path(path).name}.k1ll.tmp").write_bytes(b"half a file")
        die()
    return save_tensors(path, tensors, *args, **kwargs)
def faulty_json(path, obj):
    if point == "state" and count["saves"] == int(nth):
        die()
    return save_json(path, obj)
checkpoint.Checkpointer.save = counted_save
checkpoint.save_tensors, checkpoint.save_json = faulty_tensors, faulty_json
from anatomist.cli import main
sys.argv = ["anatomist", *sys.argv[1:]]
main()
"""


@pytest.mark.usefixtures("pentagon_in_cache")
def test_killed_during_checkpoint_writes_again_and_again_then_resumed_ends_as_an_uninterrupted_run(
        tmp_path: Path) -> None:
    whole = run(load_run_config("spd-toy", spd_sets()), tmp_path / "whole", threads=1)
    out = tmp_path / "killed"
    args = ["run", "spd-toy", *[a for s in spd_sets() for a in ("--set", s)], "--out", str(out), "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1",
           "ANATOMIST_PROGRESS": "0"}
    faults = ["tensor:1", "after:1", "state:2"]  # each attempt resumes from the last one's checkpoint
    reached = []
    for i, fault in enumerate(faults):
        resume = ["--resume"] if i else []
        proc = subprocess.run([sys.executable, "-c", FAULTY_RUN, *args, *resume], env={**env, "FAULT": fault},
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == -9, (fault, proc.stderr[-2000:])
        reached.append(Checkpointer(out).latest())
    assert reached == [None, 10, 20]
    assert temporaries(out)  # the last kill left a half-written checkpoint behind
    resumed = run(load_run_config("spd-toy", spd_sets()), out, resume=True, threads=1)
    assert temporaries(out) == []
    a = load_tensors(Checkpointer(tmp_path / "whole").folder(STEPS) / "model.safetensors")
    b = load_tensors(Checkpointer(out).folder(STEPS) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["mmcs"] == whole.metrics["mmcs"]


def test_a_second_writer_into_a_running_folder_is_refused(tmp_path: Path) -> None:
    """Two runs into one folder would interleave their checkpoints and logs: the second is refused at once."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from anatomist.core.lock import folder_lock\n"
                               f"with folder_lock({str(tmp_path)!r}):\n print('held', flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(AnatomistError, match=f"pid {holder.pid}.*running"):
            run(load_run_config("toy-train", ["steps=5"]), tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "config.yaml").exists()
