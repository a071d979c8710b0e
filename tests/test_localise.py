"""Run kind `localise` on a tiny Llama: saved dictionaries (their own sites from their metadata) and bases fitted in
the run, one table per curve, whole-site fractions, the plot, and --resume reusing the finished curves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import anatomist.runs.localise as localise_kind
from anatomist.core.errors import AnatomistError
from anatomist.features import SAEConfig, make_sae, save_sae
from anatomist.runs import load_run_config, run

pytestmark = pytest.mark.usefixtures("one_thread")


def _save(path: Path, metadata: dict[str, str], d_out: int | None = None) -> str:
    torch.manual_seed(0)
    sae = make_sae(SAEConfig(arch="topk", d_in=16, d_sae=24, k=4, d_out=d_out))
    save_sae(sae, path, metadata=metadata)
    return str(path)


def _config(tmp_path: Path, tiny_lm: Path) -> dict[str, object]:
    sae = _save(tmp_path / "sae-run" / "sae", {"site": "model.layers.0:output"})
    transcoder = _save(tmp_path / "tc" / "sae", {"site": "model.layers.1.mlp:input",
                                                 "target_site": "model.layers.1.mlp:output"}, d_out=16)
    return {"kind": "localise", "model": str(tiny_lm), "site": "model.layers.1",
            "task": {"name": "ioi", "n_prompts": 4}, "counts": [0, 1, 4, 100000], "batch_size": 4,
            "basis_data": {"n_seqs": 4, "seq_len": 16},
            "decompositions": [{"path": sae}, {"name": "tc", "path": transcoder}, {"basis": "pca"},
                               {"basis": "random", "n_directions": 8}, {"name": "sae-no-error", "path": sae,
                                                                        "error_nodes": "never"}]}


def test_localise_compares_saved_dictionaries_and_bases_and_resumes_from_saved_curves(
        tmp_path: Path, tiny_lm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_run_config("localise", [f"{k}={json.dumps(v)}" for k, v in _config(tmp_path, tiny_lm).items()])
    result = run(config, tmp_path / "out", threads=1)
    m = result.metrics
    assert m["n_pairs"] == 4 and m["task"].startswith("IOI")
    table = m.tables["decompositions"]
    assert list(table) == ["sae-run", "tc", "pca", "random", "sae-no-error"]  # a folder named sae: its run's name
    assert table["sae-run"]["site"] == "model.layers.0:output"  # from the dictionary's metadata
    assert table["tc"]["target_site"] == "model.layers.1.mlp:output"
    assert table["pca"]["site"] == "model.layers.1:output" and table["random"]["d_sae"] == 8
    for name in ("sae-run", "pca"):  # residual sites cut the model: every unit patched is the counterfactual
        assert m.tables[f"curves.{name}"]["100000"]["fraction"] == pytest.approx(1, abs=1e-3)
        assert table[name]["site_patched_fraction"] == pytest.approx(1, abs=1e-3)
    assert m.tables["curves.tc"]["100000"]["fraction_of_site"] == pytest.approx(1, abs=1e-6)
    # error nodes never patched: the curve ends at the features' share
    assert m.tables["curves.sae-no-error"]["100000"]["fraction"] == pytest.approx(
        table["sae-run"]["features_patched_fraction"], abs=1e-5)
    assert (tmp_path / "out" / "localise.png").stat().st_size > 0
    assert (tmp_path / "out" / "bases" / "pca").is_dir()

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a resumed run recomputed a finished curve")

    monkeypatch.setattr(localise_kind, "localisation_curve", refuse)
    again = run(config, tmp_path / "out", resume=True, threads=1)
    assert again.metrics.tables == m.tables


def test_a_missing_dictionary_and_a_spec_without_source_are_named(tmp_path: Path, tiny_lm: Path) -> None:
    with pytest.raises(AnatomistError, match="exactly one of 'path'"):
        load_run_config("localise", ['decompositions=[{"name": "x"}]'])
    with pytest.raises(AnatomistError, match="named twice"):
        load_run_config("localise", ['decompositions=[{"basis": "pca"}, {"basis": "pca"}]'])
    config = load_run_config("localise", [f"model={tiny_lm}", "task.n_prompts=2",
                                          f'decompositions=[{{"path": "{tmp_path}/nowhere"}}]'])
    with pytest.raises(AnatomistError, match="no dictionary at .*nowhere"):
        run(config, tmp_path / "out", threads=1)
