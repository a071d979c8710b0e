"""`anatomist mdl|stitch|meta --json` (the run kinds mdl, stitch, meta) on tiny dictionaries over the 8x8 digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from anatomist.cli import app
from anatomist.features import SAEConfig, load_sae, make_sae, save_sae
from run_folder import check_run_folder


@pytest.fixture(scope="module")
def saes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("dicts")
    small = make_sae(SAEConfig(arch="topk", d_in=64, d_sae=16, k=4))
    large = make_sae(SAEConfig(arch="topk", d_in=64, d_sae=32, k=4))
    w = large.export_weights()
    w["W_dec"][:16] = small.W_dec.detach()  # half of large repeats small: 16 reconstruction latents
    large.import_weights(w)
    save_sae(small, root / "small")
    save_sae(large, root / "large")
    return root / "small", root / "large"


def run(*args: str) -> dict:  # type: ignore[type-arg]
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_mdl_json(saes: tuple[Path, Path], tmp_path: Path) -> None:
    small, large = saes
    out = run("mdl", str(small), str(large), "--images", "digits", "--tolerance", "10", "--out", str(tmp_path),
              "--plot", str(tmp_path / "copy.png"), "--json")
    assert out["kind"] == "mdl" and out["numbers"]["mdl_choice"] in (str(small), str(large))
    rows = list(out["tables"]["results"].values())
    by_code = min(rows, key=lambda row: row["code_bits_per_input"])["path"]  # both meet a tolerance of 10
    by_total = min(rows, key=lambda row: row["bits_per_input"])["path"]
    assert out["numbers"]["mdl_choice"] == by_code and out["numbers"]["mdl_choice_with_dictionary"] == by_total
    assert "the paper's" in out["numbers"]["mdl_choice_rule"]
    assert "dictionary" in out["numbers"]["mdl_choice_with_dictionary_rule"]
    r = out["tables"]["results"]["0"]
    assert r["code_bits_per_input"] == pytest.approx(r["firing_bits_per_input"] + r["value_bits_per_input"])
    assert r["l0"] == pytest.approx(4.0)
    assert check_run_folder(tmp_path, "mdl").tables["results"]["1"]["path"] == str(large)
    assert (tmp_path / "mdl_frontier.png").is_file() and (tmp_path / "copy.png").is_file()


def test_stitch_json(saes: tuple[Path, Path], tmp_path: Path) -> None:
    small, large = saes
    out = run("stitch", str(small), str(large), "--images", "digits", "--out", str(tmp_path), "--json")
    numbers, path = out["numbers"], out["tables"]["path"]
    assert numbers["n_novel"] == 16 and numbers["n_groups"] == 16
    assert path[str(len(path) - 1)]["mse"] == pytest.approx(numbers["mse_large"])
    assert check_run_folder(tmp_path, "stitch").numbers["n_novel"] == 16 and (tmp_path / "stitch_path.png").is_file()


def test_meta_json(saes: tuple[Path, Path], tmp_path: Path) -> None:
    _, large = saes
    out = run("meta", str(large), "--d-meta", "8", "--k", "2", "--steps", "20", "--latent", "3",
              "--out", str(tmp_path / "run"), "--save", str(tmp_path / "copy"), "--json")
    assert out["numbers"]["n_base"] == 32 and out["numbers"]["n_meta"] == 8
    assert isinstance(out["tables"]["latent_3"], dict) and out["tables"]["latent_3"]
    assert check_run_folder(tmp_path / "run", "meta").numbers["n_meta"] == 8
    assert load_sae(tmp_path / "copy").cfg.d_sae == 8


def test_mdl_needs_one_input_kind(saes: tuple[Path, Path]) -> None:
    result = CliRunner().invoke(app, ["mdl", str(saes[0]), "--out", str(saes[0].parent / "nothing")])
    assert result.exit_code != 0
