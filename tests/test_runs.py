"""The run contract: one run() for every kind, one metrics schema, one provenance writer, generated CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from anatomist.cli import app
from anatomist.core.errors import AnatomistError
from anatomist.core.metrics import Metrics, read_metrics
from anatomist.core.provenance import read_provenance
from anatomist.core.threads import torch_threads
from anatomist.nets.assets import LoadedModel
from anatomist.nets.toys import TrainedToy
from anatomist.runs import KINDS, load_run_config, parse_run_config, run
from anatomist.runs.base import apply_overrides


def test_metrics_layout_flattens_numbers_and_finds_tables() -> None:
    m = Metrics.from_nested({"mmcs": 0.9, "init": {"mmcs": 0.5, "ml2r": 1.0}, "gaps": [72.0, 72.0],
                             "layers": {"W": {"alive": 5, "mmcs": 1.0}, "b": {"alive": 2, "mmcs": 0.5}},
                             "site": "model.layers.6", "curve": [{"step": 1, "loss": 2.0}]})
    assert m.numbers == {"mmcs": 0.9, "init.mmcs": 0.5, "init.ml2r": 1.0, "gaps": [72.0, 72.0],
                         "site": "model.layers.6"}
    assert m.tables["layers"]["b"] == {"alive": 2, "mmcs": 0.5}
    assert m.tables["curve"] == {"0": {"step": 1, "loss": 2.0}}


def test_metrics_json_is_strict_json_with_nan_named() -> None:
    doc = Metrics.from_nested({"fvu": math.nan, "ok": 1.0, "t": {"r": {"x": math.inf}}}).to_json("k")
    text = json.dumps(doc, allow_nan=False)  # raises on a bare NaN
    assert json.loads(text)["numbers"]["fvu"] is None
    assert doc["non_finite"] == ["fvu", "t.r.x"]


def test_metrics_rejects_objects_it_cannot_lay_out() -> None:
    with pytest.raises(AnatomistError, match="'weights'"):
        Metrics.from_nested({"weights": torch.zeros(2)})


def test_overrides_set_nested_keys_as_yaml_values() -> None:
    data = apply_overrides({"kind": "x", "spd": {"steps": 10}}, ["spd.steps=20", "spd.lr=1e-3", "name=null"])
    assert data == {"kind": "x", "spd": {"steps": 20, "lr": 1e-3}, "name": None}
    with pytest.raises(AnatomistError, match="key.path=value"):
        apply_overrides({}, ["novalue"])


def test_setting_one_key_of_a_section_the_yaml_leaves_out_keeps_the_kinds_recipe(tmp_path: Path) -> None:
    (tmp_path / "lm.yaml").write_text("kind: spd-lm\n")
    recipe = load_run_config(str(tmp_path / "lm.yaml")).spd  # type: ignore[attr-defined]
    changed = load_run_config(str(tmp_path / "lm.yaml"), ["spd.steps=3"]).spd  # type: ignore[attr-defined]
    assert changed.steps == 3 and recipe.steps != 3
    assert changed.model_dump(exclude={"steps"}) == recipe.model_dump(exclude={"steps"})  # C 128, deltas, KL, ...
    assert recipe.delta_component and recipe.C == 128  # the recipe differs from SPDConfig's own defaults


def test_unknown_kind_and_key_are_named() -> None:
    with pytest.raises(AnatomistError, match="unknown run kind 'toy-trian'.*toy-train"):
        parse_run_config({"kind": "toy-trian"})
    with pytest.raises(AnatomistError, match="key 'kind' missing"):
        parse_run_config({"toy": "tms-5-2"})
    with pytest.raises(AnatomistError, match="unknown key 'stpes'.*did you mean 'steps'"):
        load_run_config("toy-train", ["stpes=3"])


def test_threads_are_restored_even_when_the_block_raises() -> None:
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), torch_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError
    assert torch.get_num_threads() == before


def test_toy_run_writes_the_three_files(tmp_path: Path) -> None:
    cfg = load_run_config("toy-train", ["steps=20", "seed=3"])
    result = run(cfg, tmp_path / "run", threads=1)
    kind, summary, metrics = read_metrics(tmp_path / "run")
    assert kind == "toy-train" and summary == result.summary and "tms-5-2" in summary
    assert metrics.numbers["steps"] == 20 and metrics.numbers["final_loss"] > 0
    assert set(metrics.tables["loss_curve"]) == {"20"}
    assert read_provenance(tmp_path / "run")["seed"] == 3
    again = parse_run_config(yaml.safe_load((tmp_path / "run" / "config.yaml").read_text()))
    assert again == cfg  # config.yaml is the full resolved config, re-runnable as is
    assert TrainedToy.load(tmp_path / "run").config.steps == 20


def test_resume_refuses_non_training_kinds_and_missing_runs(tmp_path: Path) -> None:
    cfg = load_run_config("toy-train", ["steps=5"])
    with pytest.raises(AnatomistError, match="does not train"):
        run(cfg, tmp_path, resume=True)
    sweep = parse_run_config({"kind": "sweep", "base": {"kind": "toy-train"}, "runs": {"a": {}}})
    with pytest.raises(AnatomistError, match="continues without --resume: run it again into"):
        run(sweep, tmp_path, resume=True)  # a sweep resumes by running again, not by a flag it would refuse


def test_cli_lists_kinds_and_shows_fields() -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["run", "--list", "--json"])
    assert listed.exit_code == 0 and set(json.loads(listed.output)) == set(KINDS)
    fields = runner.invoke(app, ["run", "toy-train", "--help", "--json"])
    rows = {r["key"]: r for r in json.loads(fields.output)["fields"]}
    assert rows["steps"]["description"].startswith("optimizer steps")


def test_cli_runs_a_config_file_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "toy.yaml"
    path.write_text("kind: toy-train\ntoy: tms-5-2\nsteps: 50\n")
    result = CliRunner().invoke(app, ["run", str(path), "--set", "steps=10", "--out", str(tmp_path / "r"), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["kind"] == "toy-train" and doc["numbers"]["steps"] == 10 and doc["out"] == str(tmp_path / "r")


def test_configs_form_one_discriminated_union_on_kind() -> None:
    from anatomist.runs.base import run_config_union

    union = run_config_union()
    assert type(union.validate_python({"kind": "toy-train", "steps": 3})).__name__ == "ToyTrainConfig"
    assert set(union.json_schema()["$defs"]) >= {KINDS[k].config.__name__ for k in KINDS}


def test_resume_refuses_a_config_that_differs_and_names_the_keys(tmp_path: Path) -> None:
    from anatomist.runs.base import _check_resume

    cfg = load_run_config("toy-train", ["steps=5", "seed=0"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    _check_resume(cfg, tmp_path)  # the same config resumes
    with pytest.raises(AnatomistError, match="differs in seed, steps"):
        _check_resume(cfg.replace(seed=5, steps=7), tmp_path)
    with pytest.raises(AnatomistError, match="nothing to resume"):
        _check_resume(cfg, tmp_path / "elsewhere")


def test_site_read_stops_early_and_writes_its_plot(tmp_path: Path, smollm2: LoadedModel) -> None:
    result = run(load_run_config("site-read", ["n_seqs=2", "seq_len=16", "batch_size=2", "timed_full_batches=1"]),
                 tmp_path)
    assert result.metrics["tokens"] == 32 and result.metrics["d_model"] == 576
    assert (tmp_path / "residual_dims.png").is_file()


def test_sweep_runs_each_variant_as_its_own_run_and_tables_them(tmp_path: Path) -> None:
    sweep = parse_run_config({"kind": "sweep", "base": {"kind": "toy-train", "toy": "tms-5-2", "steps": 5},
                              "runs": {"short": {}, "longer": {"steps": 10}, "other_seed": {"seed": 1}},
                              "columns": ["steps", "final_loss"], "only": ["longer", "short"]})
    result = run(sweep, tmp_path)
    rows = result.metrics.tables["runs"]
    assert list(rows) == ["short", "longer"]  # the sweep's order, `only` filters
    assert rows["short"]["steps"] == 5 and rows["longer"]["steps"] == 10 and rows["longer"]["kind"] == "toy-train"
    assert read_metrics(tmp_path / "longer")[2].numbers["final_loss"] == rows["longer"]["final_loss"]
    assert not (tmp_path / "other_seed").exists()


def test_sweep_names_the_run_whose_config_is_wrong() -> None:
    with pytest.raises(AnatomistError, match="sweep run 'bad'.*stpes"):
        parse_run_config({"kind": "sweep", "base": {"kind": "toy-train"}, "runs": {"ok": {}, "bad": {"stpes": 3}}})
    with pytest.raises(AnatomistError, match=r"unknown run name\(s\) \['nope'\]"):
        parse_run_config({"kind": "sweep", "base": {"kind": "toy-train"}, "runs": {"ok": {}}, "only": ["nope"]})


def test_kind_help_lists_each_architectures_fields_once_with_who_has_them() -> None:
    out = CliRunner().invoke(app, ["run", "sae-train", "--help", "--json"])
    rows = {r["key"]: r for r in json.loads(out.output)["fields"]}
    assert rows["sae.arch"]["type"] == "one of 'relu', 'relu-tied', 'topk', 'batchtopk', 'jumprelu'"
    assert rows["sae.k"]["description"].endswith("[topk, batchtopk only]")
    assert not rows["sae.d_sae"]["description"].endswith("only]") and rows["data.n_seqs"]["default"] == "256"
