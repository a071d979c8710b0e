"""`anatomist mdl|stitch|meta --json` on tiny dictionaries over the 8x8 digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from anatomist.cli import _mount, app
from anatomist.features import SAEConfig, make_sae, save_sae

_mount()


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


def test_mdl_json(saes: tuple[Path, Path]) -> None:
    small, large = saes
    out = run("mdl", str(small), str(large), "--images", "digits", "--tolerance", "10", "--json")
    assert out["mdl_choice"] in (str(small), str(large))
    r = out["results"][0]
    assert r["code_bits_per_input"] == pytest.approx(r["firing_bits_per_input"] + r["value_bits_per_input"])
    assert r["l0"] == pytest.approx(4.0)


def test_stitch_json(saes: tuple[Path, Path]) -> None:
    small, large = saes
    out = run("stitch", str(small), str(large), "--images", "digits", "--json")
    assert out["n_novel"] == 16 and out["n_groups"] == 16
    assert out["path"][-1]["mse"] == pytest.approx(out["mse_large"])


def test_meta_json(saes: tuple[Path, Path]) -> None:
    _, large = saes
    out = run("meta", str(large), "--d-meta", "8", "--k", "2", "--steps", "20", "--latent", "3", "--json")
    assert out["n_base"] == 32 and out["n_meta"] == 8
    assert isinstance(out["latent_3"], list)


def test_mdl_needs_one_input_kind(saes: tuple[Path, Path]) -> None:
    result = CliRunner().invoke(app, ["mdl", str(saes[0])])
    assert result.exit_code != 0
