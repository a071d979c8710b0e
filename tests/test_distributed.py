"""Data-parallel SAE training over torch.distributed (gloo on CPU, ranks started by torch.multiprocessing.spawn).

Two ranks with a global batch of B train what one process with batch B trains (weights, Adam moments, logged
losses and gradient norms); only rank 0 writes the run folder; a two-rank run killed after a checkpoint resumes
to the weights of an uninterrupted two-rank run. The one-process path is tests/test_train.py, unchanged.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file, save_file

from anatomist import AnatomistError, Site
from anatomist.core import Checkpointer
from anatomist.core.distributed import world_size
from anatomist.data.store import ActivationStore
from anatomist.features.train import TrainConfig, train_sae
from anatomist.runs import load_run_config, parse_run_config, run
from conftest import tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")

IDS = torch.randint(1, 50, (40, 8), generator=torch.Generator().manual_seed(1))  # 36 train + 4 held out
STEPS = 12
SITES = ["model.layers.0", "model.layers.2"]


def _config(objective: str = "local", **kw: Any) -> dict[str, Any]:
    """A tiny run: 16 rows (e2e: 2 sequences) per rank and step; no clipping, so a summed gradient would show in
    Adam's moments (Adam's step itself hardly depends on the gradient's scale)."""
    sae = dict(arch="topk", d_in=16, d_sae=32, k=4) if objective == "local" else dict(arch="relu", d_in=16, d_sae=32)
    base = dict(model="tiny", site="model.layers.1", objective=objective, steps=STEPS, batch_size=32, batch_seqs=4,
                lr=3e-3, grad_clip=None, checkpoint_every=4, log_every=1, eval_every=6, warmup_steps=3, seed=5,
                data=dict(cache=None, block_seqs=4, buffer_rows=64, model_batch_size=4, eval_seqs=4), sae=sae)
    return {**base, **kw}


# ---------------------------------------------------------------------------------------------
# what each rank runs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, world: int, port: int, task: Callable[..., None], kwargs: dict[str, Any]) -> None:
    """One rank, as torchrun would start it: the launch variables, then the task (which joins the group)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), ANATOMIST_PROGRESS="0", ANATOMIST_DIST_TIMEOUT="120")
    torch.set_num_threads(1)
    task(**kwargs)


def _spawn(task: Callable[..., None], world: int = 2, **kwargs: Any) -> None:
    mp.spawn(_rank_main, args=(world, _free_port(), task, kwargs), nprocs=world, join=True)


class _Stop(Exception):
    """Stands for a job stopped right after a checkpoint (on every rank, as a scheduler stops one)."""


def _stop_after(step_to_stop: int) -> Callable[[], None]:
    """Make every rank raise _Stop right after the checkpoint of `step_to_stop` (rank 0 wrote it); returns the undo."""
    save = Checkpointer.save

    def save_then_stop(self: Checkpointer, step: int, *args: Any, **kwargs: Any) -> Path:
        path = save(self, step, *args, **kwargs)
        if step == step_to_stop:
            raise _Stop(step)
        return path

    Checkpointer.save = save_then_stop  # type: ignore[method-assign]
    return lambda: setattr(Checkpointer, "save", save)


def _every_run(root: str, config: str) -> None:
    """What each of the two ranks runs, in one spawn (starting a rank costs far more than these tiny runs):
    train_sae for both objectives; `anatomist run` uninterrupted; the same run stopped after step 4, restarted
    without --resume (refused), then resumed."""
    out = Path(root)
    for objective in ("local", "e2e"):
        train_sae(TrainConfig.parse(_config(objective)), out / "ranks" / objective, tiny_llama(3, 16, 32, 50), IDS)
    assert world_size() == 2
    run(load_run_config(config), out / "full")
    undo = _stop_after(4)
    try:
        run(load_run_config(config), out / "stopped")
    except _Stop:
        undo()
    try:
        run(load_run_config(config), out / "stopped")
    except AnatomistError as e:  # each rank says it was refused: neither was left waiting for the other
        (out / f"refused-{os.environ['RANK']}.txt").write_text(str(e))
    run(load_run_config(config), out / "stopped", resume=True)
    run(load_run_config(str(Path(config).parent / "sites.yaml")), out / "sites")  # module-parallel: a site per rank
    try:  # a kind that does not split its work over ranks is refused on every rank, before it writes anything
        run(parse_run_config({"kind": "sae-eval", "path": "x", "model": "tiny", "site": "x"}), out / "eval")
    except AnatomistError as e:
        (out / f"not-parallel-{os.environ['RANK']}.txt").write_text(str(e))


# ---------------------------------------------------------------------------------------------
# helpers


def _tensors(folder: Path, pattern: str = "*.safetensors") -> dict[str, torch.Tensor]:
    files = sorted(folder.glob(pattern))
    assert files, f"nothing matches {folder / pattern}"
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(f).items()}


def _steps(run_dir: Path) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if "loss" in r]


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
        else:
            assert torch.equal(a[k], b[k]), k  # the dead-latent counters: exactly the same fired masks


# ---------------------------------------------------------------------------------------------
# tests


def test_a_rank_draws_its_own_slice_of_every_global_batch() -> None:
    model = tiny_llama(3, 16, 32, 50)
    args: dict[str, Any] = dict(batch_size=32, buffer_rows=64, block_seqs=4, model_batch_size=4, seed=3)
    one = iter(ActivationStore(model, IDS, ["model.layers.1"], **args))
    ranks = [iter(ActivationStore(model, IDS, ["model.layers.1"], rank=r, world_size=2, **args)) for r in (0, 1)]
    for _ in range(10):  # across windows and into the second epoch
        whole = next(one)[Site.parse("model.layers.1")]
        parts = [next(r)[Site.parse("model.layers.1")] for r in ranks]
        assert parts[0].shape == (16, 16) and torch.equal(torch.cat(parts), whole)
    with pytest.raises(AnatomistError, match="batch_size 30 must split evenly over world_size 4"):
        ActivationStore(model, IDS, ["model.layers.1"], **{**args, "batch_size": 30}, rank=0, world_size=4)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sae-train YAML over a saved tiny Llama and a file of its token ids, with an activation cache folder."""
    folder = tmp_path_factory.mktemp("ddp-run")
    tiny_llama(3, 16, 32, 50).save_pretrained(folder / "model")
    save_file({"inputs": IDS.contiguous()}, str(folder / "ids.safetensors"))
    cfg = _config(model=str(folder / "model"), grad_clip=1.0)
    cfg["data"].update(inputs=str(folder / "ids.safetensors"), cache=str(folder / "acts"))
    (folder / "sae.yaml").write_text(yaml.safe_dump({"kind": "sae-train", **cfg}))
    sites = {k: v for k, v in cfg.items() if k != "site"}
    sites["data"] = {**cfg["data"], "cache": str(folder / "sites-acts")}
    (folder / "sites.yaml").write_text(yaml.safe_dump({"kind": "sae-train-sites", **sites, "sites": SITES,
                                                       "distribute_sites": True}))
    return folder / "sae.yaml"


@pytest.fixture(scope="module")
def ranks(tiny_run: Path) -> Path:
    """The folder where two ranks did `_every_run`: rank 0 harvested the cache of `tiny_run`, rank 1 read it."""
    root = tiny_run.parent / "ranks"
    _spawn(_every_run, root=str(root), config=str(tiny_run))
    return root


def test_two_ranks_train_what_one_process_trains_with_the_global_batch(tmp_path: Path, ranks: Path) -> None:
    for objective in ("local", "e2e"):
        one, two = tmp_path / objective, ranks / "ranks" / objective
        train_sae(TrainConfig.parse(_config(objective)), one, tiny_llama(3, 16, 32, 50), IDS)
        _assert_close(_tensors(two / "sae"), _tensors(one / "sae"))
        last = Checkpointer(one).folder(STEPS).relative_to(one)  # the dictionary, dead counters, Adam's moments
        _assert_close(_tensors(two / last), _tensors(one / last))
        logged, expected = _steps(two), _steps(one)
        assert [r["step"] for r in logged] == list(range(1, STEPS + 1))  # one line per step: rank 0's
        for key in ("loss", "grad_norm", "l0"):  # the loss averaged over ranks; the averaged gradient's norm
            assert [r[key] for r in logged] == pytest.approx([r[key] for r in expected], rel=1e-4, abs=1e-6), key


def test_only_rank_0_writes_the_run_folder(ranks: Path, tiny_run: Path) -> None:
    full = ranks / "full"
    names = {p.name for p in full.iterdir()}
    assert names == {"config.yaml", "metrics.json", "provenance.json", "metrics.jsonl", "checkpoints", "sae",
                     ".anatomist-lock"}
    records = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, STEPS + 1))  # no line twice
    assert [r["step"] for r in records if "eval" in r] == [6, 12]
    assert len([r for r in records if "final" in r]) == 1
    assert Checkpointer(full).steps() == [8, 12]
    assert json.loads((full / "metrics.json").read_text())["numbers"]["steps"] == STEPS
    assert json.loads((tiny_run.parent / "acts" / "manifest.json").read_text())["complete"]
    for r in (0, 1):
        said = (ranks / f"not-parallel-{r}.txt").read_text()
        assert "'sae-eval' does not run data-parallel" in said and "sae-train" in said
    assert not (ranks / "eval").exists()


def test_two_ranks_stopped_after_a_checkpoint_resume_to_the_uninterrupted_weights(ranks: Path) -> None:
    for r in (0, 1):  # the restart without --resume was refused on both ranks, in rank 0's words
        assert "newest checkpoint: step 4" in (ranks / f"refused-{r}.txt").read_text()
    stopped = ranks / "stopped"
    log = (stopped / "metrics.jsonl").read_text()
    assert log.count('"event": "resume", "step": 4') == 1
    a, b = _tensors(ranks / "full" / "sae"), _tensors(stopped / "sae")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_ranks_one_site_each_train_what_one_process_trains_site_by_site(ranks: Path, tiny_run: Path,
                                                                            tmp_path: Path) -> None:
    sites = ranks / "sites"
    recipe = {k: v for k, v in yaml.safe_load((tiny_run.parent / "sites.yaml").read_text()).items()
              if k not in ("kind", "sites", "distribute_sites")}
    for site in SITES:
        alone = {**recipe, "kind": "sae-train", "site": site, "data": {**recipe["data"], "cache": None}}
        run(parse_run_config(alone), tmp_path / site)
        _assert_close(_tensors(sites / site / "sae"), _tensors(tmp_path / site / "sae"))
        assert [r["step"] for r in _steps(sites / site)] == list(range(1, STEPS + 1))  # its rank's log, alone
    table = json.loads((sites / "metrics.json").read_text())["tables"]["sites"]
    assert set(table) == set(SITES)  # rank 0 gathered the site rank 1 trained
    manifest = json.loads((tiny_run.parent / "sites-acts" / "manifest.json").read_text())
    assert manifest["sites"] == [f"{s}:output" for s in SITES]  # one harvest, one forward per batch, both sites
