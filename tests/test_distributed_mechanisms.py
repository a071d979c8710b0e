"""Data-parallel parameter decomposition (SPD, APD, L3D through `training.fit`) over 2 gloo ranks.

Two ranks with a global batch of B decompose what one process with batch B decomposes: the same factors, CI
networks and Adam moments within float tolerance, and the same logged losses. That needs the random masks drawn
for the global batch and sliced, and every batch-wide step taken over the whole batch: the frequency term of the
minimality loss, PGD sources shared by the batch, APD's and L3D's batch top-k, L3D's batch-mean reference and its
normalisation. Only rank 0 writes the run folder, and a two-rank run stopped after a checkpoint resumes to the
weights of the uninterrupted one. Starting ranks is slow, so one spawn runs every case (`_every_run`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from anatomist.core import Checkpointer
from anatomist.core.distributed import barrier
from anatomist.core.paths import cache_dir
from anatomist.mechanisms import apd, l3d, spd
from anatomist.mechanisms.apd import APDConfig
from anatomist.mechanisms.l3d import L3DConfig
from anatomist.mechanisms.spd import SPDConfig
from anatomist.mechanisms.training import FitConfig
from anatomist.nets.toys import TrainedToy, config_hash, load_toy
from anatomist.runs import parse_run_config, run
from anatomist.runs.toy_scoring import default_targets, toy_batches
from conftest import pentagon_tms
from test_distributed import _spawn, _steps, _Stop, _tensors

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS, BATCH = 8, 64
TIMINGS = {"step", "time_s", "steps_per_s", "eta_s"}  # numbers that measure the machine, not the result
FIT = dict(steps=STEPS, batch_size=BATCH, log_every=2, checkpoint_every=4, seed=3)
PLUS = dict(delta_component=True, faithfulness_coeff=0.0, stochastic_recon_subset_coeff=1.0, pgd_recon_coeff=1.0,
            pgd_steps=2, pgd_scope="batch", importance_minimality_beta=0.5, pnorm=2.0, pnorm_final=0.5)
METHODS: dict[str, tuple[Any, type[FitConfig], dict[str, Any]]] = {
    "spd": (spd, SPDConfig, {"C": 10, **FIT}),  # the paper's losses
    "spd-plus": (spd, SPDConfig, {"C": 10, **FIT, **PLUS}),  # every later option
    "spd-pgd-input": (spd, SPDConfig, {"C": 10, **FIT, "pgd_recon_coeff": 1.0}),  # PGD sources per input
    "apd": (apd, APDConfig, {**FIT, "top_k": 0.211, "batch_top_k": True}),
    "l3d": (l3d, L3DConfig, {**FIT, "top_k": 0.25, "batch_top_k": True}),  # batch-mean reference
    "l3d-shuffled": (l3d, L3DConfig, {**FIT, "reference": "shuffled", "batch_top_k": False}),
}
# L3D with shuffled references: its losses agree to 1e-5 (relative), but Adam divides by √v, which turns float
# summation-order noise in a near-zero gradient entry into a step of up to lr (1e-2): entries differ by ~2e-4
ATOL = {"l3d-shuffled": 1e-3}
SPD_RUN = {"kind": "spd-toy", "toy": "tms-5-2", "spd": {"C": 10, **FIT}}


def _fit(name: str, run_dir: Path, resume: bool = False, **overrides: Any) -> None:
    """A method's `decompose` on the cached tms-5-2 with its seeded toy batches, checkpointing into `run_dir`."""
    method, config_cls, fields = METHODS[name]
    toy, cfg = load_toy("tms-5-2"), config_cls(**{**fields, **overrides})
    data_gen = torch.Generator().manual_seed(cfg.seed + 2)
    method.decompose(toy.model, toy_batches(toy, cfg.batch_size, data_gen), default_targets(toy), cfg,
                     run_dir=run_dir, resume=resume, generators={"data": data_gen})


def _stop_after_synced(step_to_stop: int) -> Callable[[], None]:
    """Every rank raises _Stop once rank 0 has the checkpoint of `step_to_stop` on disk (as a job stopped after a
    checkpoint); returns the undo."""
    save = Checkpointer.save

    def save_then_stop(self: Checkpointer, step: int, *args: Any, **kwargs: Any) -> Path:
        path = save(self, step, *args, **kwargs)
        if step == step_to_stop:
            barrier()
            raise _Stop(step)
        return path

    Checkpointer.save = save_then_stop  # type: ignore[method-assign]
    return lambda: setattr(Checkpointer, "save", save)


def _every_run(root: str) -> None:
    """What each of the two ranks runs: every method's fit; spd-plus stopped after step 4 and resumed; and one
    `anatomist run spd-toy` (the run kind: toy, scores, plots, decomposition)."""
    out = Path(root)
    for name in METHODS:
        _fit(name, out / name)
    undo = _stop_after_synced(4)
    try:
        _fit("spd-plus", out / "stopped")
    except _Stop:
        undo()
    _fit("spd-plus", out / "stopped", resume=True)
    run(parse_run_config(SPD_RUN), out / "spd-run")
    (out / f"done-{os.environ['RANK']}.txt").write_text("")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A toy cache for the ranks and the one-process runs, holding the exact pentagon as tms-5-2 (none trained)."""
    root = tmp_path_factory.mktemp("mech-cache")
    before = os.environ.get("ANATOMIST_CACHE")
    os.environ["ANATOMIST_CACHE"] = str(root)
    model, cfg = pentagon_tms()
    TrainedToy(model, cfg, final_loss=0.0).save(cache_dir("toys", f"{cfg.name}-{config_hash(cfg)}"))
    yield root
    if before is None:
        del os.environ["ANATOMIST_CACHE"]
    else:
        os.environ["ANATOMIST_CACHE"] = before


@pytest.fixture(scope="module")
def ranks(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mech-ranks")
    _spawn(_every_run, root=str(root))
    return root


def _state(folder: Path) -> dict[str, torch.Tensor]:
    """The last checkpoint's decomposition and Adam moments."""
    return _tensors(Checkpointer(folder).folder(STEPS), "*.safetensors")


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if k.startswith("rng.safetensors"):
            continue  # the global torch RNG: each rank's own process state, used by no step of the methods
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("name", list(METHODS))
def test_two_ranks_decompose_what_one_process_decomposes_with_the_global_batch(
    name: str, cache: Path, ranks: Path, tmp_path: Path
) -> None:
    one, two = tmp_path / name, ranks / name
    _fit(name, one)
    _assert_close(_state(two), _state(one), ATOL.get(name, 1e-6))
    rows = _steps(one)
    logged = _steps(two)
    assert [r["step"] for r in logged] == [r["step"] for r in rows] == [2, 4, 6, 8]  # one line per log: rank 0's
    for key in rows[0]:
        if key not in TIMINGS:
            assert [r[key] for r in logged] == pytest.approx([r[key] for r in rows], rel=1e-4, abs=1e-7), key


def test_the_tolerance_tells_the_global_batch_from_one_ranks_half(cache: Path, ranks: Path, tmp_path: Path) -> None:
    """Control: one process on B/2 rows per step (what a rank would train without averaging) lands far outside
    the tolerance the tests above hold the two ranks to."""
    _fit("spd", tmp_path / "half", batch_size=BATCH // 2)
    a, b = _state(ranks / "spd"), _state(tmp_path / "half")
    key = "model.safetensors:ci.w_in"
    assert not torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_only_rank_0_writes_the_run_folder(cache: Path, ranks: Path, tmp_path: Path) -> None:
    run(parse_run_config(SPD_RUN), tmp_path / "spd")
    two = sorted(str(p.relative_to(ranks / "spd-run")) for p in (ranks / "spd-run").rglob("*"))
    one = sorted(str(p.relative_to(tmp_path / "spd")) for p in (tmp_path / "spd").rglob("*"))
    assert two == one and "decomposition.safetensors" in two and "checkpoints/step_00000008" in two
    assert not list(ranks.glob("*/checkpoints/.tmp-*"))
    assert {p.name for p in ranks.glob("done-*")} == {"done-0.txt", "done-1.txt"}  # neither rank was left waiting
    metrics = json.loads((ranks / "spd-run" / "metrics.json").read_text())
    assert metrics["numbers"]["steps"] == STEPS
    _assert_close(_tensors(ranks / "spd-run", "decomposition.safetensors"),
                  _tensors(tmp_path / "spd", "decomposition.safetensors"))


def test_two_ranks_stopped_after_a_checkpoint_resume_to_the_uninterrupted_weights(ranks: Path) -> None:
    stopped = ranks / "stopped"
    assert (stopped / "metrics.jsonl").read_text().count('"event": "resume", "step": 4') == 1
    a, b = _state(ranks / "spd-plus"), _state(stopped)
    for k in a:
        if not k.startswith("rng.safetensors"):
            assert torch.equal(a[k], b[k]), k
