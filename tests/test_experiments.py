"""Every experiment YAML is a run config: it validates, and each kind's smallest one runs through `run()`.

A kind's `smoke` overrides shrink a run to seconds (few steps, few sequences) without changing what it
computes, so this checks that the shipped experiments still mean something to today's code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anatomist.core.config import read_yaml_mapping
from anatomist.core.metrics import FORMAT, read_metrics
from anatomist.core.provenance import read_provenance
from anatomist.runs import KINDS, load_run_config, run
from fake_sweep import make_fake_sweep

EXPERIMENTS = Path(__file__).parent.parent / "experiments"
YAMLS = sorted(EXPERIMENTS.glob("*.yaml"))


# kinds that read what another run made (a sweep's SAEs and activation cache): tested on a stand-in below
READS_OTHER_RUNS = {"dictsci"}


def _smallest_per_kind() -> list[Path]:
    """For each kind, its experiment YAML with the shortest text (the smallest set-up, by a cheap proxy)."""
    best: dict[str, Path] = {}
    for path in YAMLS:
        kind = str(read_yaml_mapping(path).get("kind"))
        if kind in READS_OTHER_RUNS:
            continue
        if kind not in best or len(path.read_text()) < len(best[kind].read_text()):
            best[kind] = path
    return sorted(best.values())


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_every_experiment_yaml_is_a_valid_run_config(path: Path) -> None:
    config = load_run_config(str(path))
    assert config.kind in KINDS


def smoke_overrides(path: Path) -> list[str]:
    """The kind's overrides; a sweep runs its first variant with the overrides of the kind it sweeps."""
    data = read_yaml_mapping(path)
    if data["kind"] != "sweep":
        return list(KINDS[data["kind"]].config.smoke)
    swept = KINDS[data["base"]["kind"]].config.smoke
    return [f"overrides={json.dumps(list(swept))}", f"only={json.dumps([next(iter(data['runs']))])}"]


@pytest.mark.parametrize("path", _smallest_per_kind(), ids=lambda p: p.name)
def test_each_kinds_smallest_experiment_runs_and_writes_the_three_files(path: Path, tmp_path: Path) -> None:
    kind = str(read_yaml_mapping(path)["kind"])
    config = load_run_config(str(path), smoke_overrides(path))
    run(config, tmp_path, threads=1)
    got_kind, _, metrics = read_metrics(tmp_path)
    assert got_kind == kind and metrics.numbers
    assert read_provenance(tmp_path)["config"]["kind"] == kind
    assert load_run_config(str(tmp_path / "config.yaml")) == config
    assert (tmp_path / "metrics.json").read_text().count(FORMAT) == 1


@pytest.mark.parametrize("path", [p for p in YAMLS if read_yaml_mapping(p)["kind"] == "dictsci"], ids=lambda p: p.name)
def test_dictsci_experiments_run_on_a_stand_in_sweep(path: Path, tmp_path: Path, tiny_lm: Path) -> None:
    """The shipped dictsci configs, every name they read, over a tiny sweep of the same names (64x narrower)."""
    spec = read_yaml_mapping(path)
    names = {*spec["mdl_runs"], *sum(spec["stitch"]["pairs"] + spec.get("seed_pairs", []), []), spec["meta"]["base"]}
    saes = {n: (int(n.split("_")[0][1:]) // 64, 2, 5 if n.endswith("_s5") else 0) for n in names}
    runs_dir, cache = make_fake_sweep(tmp_path / "sweep", str(tiny_lm), "model.layers.1", 16, 4, saes)
    config = load_run_config(str(path), [f"runs_dir={runs_dir}", f"cache={cache}", f"model={tiny_lm}",
                                         "site=model.layers.1", "seq_len=16", "train_seqs=4", "rows=60", "ce_seqs=2",
                                         "mdl.fvu_tolerance=2", "meta.d_meta=8", "meta.steps=20",
                                         "meta.context_rows=60"])
    run(config, tmp_path / "out", threads=1)
    assert read_metrics(tmp_path / "out")[0] == "dictsci"
