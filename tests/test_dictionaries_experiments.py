"""The dictionary reproductions as run kinds: `mdl-grid` (a grid of TopK SAEs on images, the MDL choice) and
`dictsci` (MDL, seeds control, stitching with CE, meta-SAE over a sweep's SAEs), on tiny inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anatomist.core.errors import AnatomistError
from anatomist.features import load_sae
from anatomist.runs import parse_run_config, run
from fake_sweep import make_fake_sweep
from run_folder import check_run_folder

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = {"kind": "mdl-grid", "images": "digits", "widths": [8, 16], "ks": [4, 16], "extra": [[32, 4]], "steps": 10,
        "batch_size": 64, "mdl": {"fvu_tolerance": 2.0}}


def test_mdl_grid_writes_its_saes_plots_and_choice(tmp_path: Path) -> None:
    cfg = parse_run_config(GRID)
    result = run(cfg, tmp_path)
    metrics = check_run_folder(tmp_path, "mdl-grid", cfg)
    names = [row["name"] for row in metrics.tables["results"].values()]
    assert names == ["w8_k4", "w16_k4", "w16_k16", "w32_k4"]  # k > width skipped, extra appended
    assert metrics["mdl_choice"] in names and metrics["mdl_choice_with_dictionary"] in names
    assert [load_sae(tmp_path / n / "sae").cfg.d_sae for n in names] == [8, 16, 16, 32]
    for file in ("mdl_frontier.png", "mdl_atoms.png", "results.md"):
        assert (tmp_path / file).is_file()
    assert "(MDL)" in (tmp_path / "results.md").read_text()
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["width"]) for r in log] == [(1, 8), (2, 16), (3, 16), (4, 32)]  # a line per SAE trained
    again = run(cfg, tmp_path, resume=True)  # resuming reads the trained SAEs back: the same numbers
    assert again.metrics.tables == result.metrics.tables


def test_dictsci_runs_every_part_on_a_tiny_sweep(tmp_path: Path, tiny_lm: Path) -> None:
    saes = {"w8_k2": (8, 2, 0), "w16_k2": (16, 2, 0), "w16_k2_s5": (16, 2, 5), "w32_k2": (32, 2, 0)}
    runs_dir, cache = make_fake_sweep(tmp_path / "sweep", str(tiny_lm), "model.layers.1", 16, 4, saes)
    cfg = parse_run_config({
        "kind": "dictsci", "runs_dir": str(runs_dir), "cache": str(cache), "model": str(tiny_lm),
        "site": "model.layers.1", "seq_len": 16, "train_seqs": 4, "rows": 60, "ce_seqs": 2,
        "parts": ["meta", "stitch", "seeds", "mdl"], "mdl": {"fvu_tolerance": 2.0},
        "mdl_runs": ["w8_k2", "w16_k2", "w32_k2"], "stitch": {"pairs": [["w8_k2", "w16_k2"], ["w16_k2", "w32_k2"]]},
        "meta": {"base": "w32_k2", "d_meta": 4, "k": 2, "steps": 20, "context_rows": 60, "show": 2},
        "seed_pairs": [["w16_k2", "w16_k2_s5"]]})
    run(cfg, tmp_path / "out")
    metrics = check_run_folder(tmp_path / "out", "dictsci", cfg)
    assert metrics["mdl.choice"] in cfg.mdl_runs  # type: ignore[attr-defined]
    assert len(metrics.tables["mdl.results"]) == 3 and "w16_k2 vs w16_k2_s5" in metrics.tables["seeds"]
    assert {"init_cosine.w8_k2", "init_cosine.w16_k2_s5"} <= set(metrics.numbers)
    for pair in ("w8_k2 -> w16_k2", "w16_k2 -> w32_k2"):
        assert metrics[f"stitch.{pair}.ce_increase.large"] is not None
        assert len(metrics.tables[f"stitch.{pair}.path"]) > 2
    assert metrics["meta.n_base"] == 32 and metrics["meta.n_meta"] == 4
    assert 0 <= metrics["meta.random_rows_explained_variance"] <= 1
    for file in ("mdl_frontier.png", "stitch_path.png", "meta_examples.md"):
        assert (tmp_path / "out" / file).is_file()


def test_dictsci_meta_part_needs_its_section() -> None:
    with pytest.raises(AnatomistError, match="meta part needs"):
        parse_run_config({"kind": "dictsci", "runs_dir": "r", "cache": "c", "site": "s", "train_seqs": 1, "rows": 1})
