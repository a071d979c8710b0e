"""`anatomist spd|apd|l3d run` and `spd score` on TMS 5-2, end to end through the run folder.

The toy is the exact pentagon put into a temporary toy cache, so no toy is trained here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from anatomist.cli.mechanisms import apd_app, l3d_app, spd_app
from anatomist.core.errors import AnatomistError
from anatomist.core.io import load_json
from anatomist.runs.mechanisms import score_spd_checkpoint
from conftest import pentagon_tms

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
app = typer.Typer()  # mounted as `anatomist.cli` mounts them
for sub, name in ((spd_app, "spd"), (apd_app, "apd"), (l3d_app, "l3d")):
    app.add_typer(sub, name=name)


@pytest.fixture
def pentagon_in_cache(tmp_cache: Path) -> None:
    from anatomist.core.paths import cache_dir
    from anatomist.nets.toys import TrainedToy, config_hash

    model, cfg = pentagon_tms()
    TrainedToy(model, cfg, final_loss=0.0).save(cache_dir("toys", f"{cfg.name}-{config_hash(cfg)}"))


def run_json(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    out: dict[str, Any] = json.loads(result.output.strip().splitlines()[-1])
    return out


@pytest.mark.usefixtures("pentagon_in_cache")
def test_spd_score_of_the_last_checkpoint_is_the_runs_own_report(tmp_path: Path) -> None:
    run = tmp_path / "run"
    printed = run_json("spd", "run", "--toy", "tms-5-2", "--steps", "30", "--out", str(run), "--json")
    written = load_json(run / "metrics.json")
    assert {k: printed[k] for k in written} == json.loads(json.dumps(written))
    final, layers = printed["numbers"], printed["tables"]["layers"]
    score = run_json("spd", "score", str(run), "--json")
    assert score["step"] == 30
    for key in ("mmcs", "min_cosine", "ml2r", "mmcs_rows", "ci_l0"):
        assert score[key] == final[key], key
    assert score["layers"]["linear1"] == layers["linear1"]
    assert score["mmcs"] != final["init_mmcs"]  # 30 steps moved it: the checkpoint, not the start, was scored

    missing = runner.invoke(app, ["spd", "score", str(run), "--step", "7"])
    assert "no checkpoint of step 7 (there are: 30)" in str(missing.exception)
    with pytest.raises(AnatomistError, match="no checkpoint"):
        score_spd_checkpoint(tmp_path / "nothing")


@pytest.mark.usefixtures("pentagon_in_cache")
def test_apd_and_l3d_runs_write_what_they_print(tmp_path: Path) -> None:
    printed = run_json("apd", "run", "--toy", "tms-5-2", "--steps", "5", "--out", str(tmp_path / "apd"), "--json")
    written = load_json(tmp_path / "apd" / "metrics.json")
    a = printed["numbers"]
    assert a["method"] == "apd" and {k: printed[k] for k in written} == written
    assert {"mmcs", "ml2r", "init_mmcs", "mmcs_rows"} <= set(a)
    l3d_run = run_json("l3d", "run", "--toy", "tms-5-2", "--steps", "5", "--out", str(tmp_path / "l3d"), "--json")
    l = l3d_run["numbers"]
    assert l["method"] == "l3d" and "mmcs" in l
    # unit-norm subnetworks: no size to compare, so no norm ratio anywhere (init_, final_, _rows, per layer)
    assert "ml2r" not in json.dumps(l3d_run)
    # the config a run wrote is a valid config for the next run
    config = str(tmp_path / "apd" / "config.yaml")
    again = run_json("apd", "run", "--config", config, "--out", str(tmp_path / "b"), "--json")
    assert again["numbers"]["steps"] == 5
