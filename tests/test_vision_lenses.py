"""The polytope lens and SPD on a vision transformer: a tiny random HF ViT saved as a local model folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

from anatomist.core.errors import AnatomistError
from anatomist.data import load_images
from anatomist.mechanisms import spd
from anatomist.nets.vision import vision_layout
from anatomist.runs.base import run
from anatomist.runs.regions import ClusterConfig, DensityConfig
from anatomist.runs.spd_vision import SPDVisionConfig, label_scores, mlp_targets

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=28,
            patch_size=7, num_channels=1, num_labels=10, initializer_range=0.5)
N_TOKENS = 17  # CLS + a 4x4 grid of 7x7 patches


def _vit() -> ViTForImageClassification:
    torch.manual_seed(0)  # a wide initialisation, so a random ViT's predictions differ between digits
    return ViTForImageClassification(ViTConfig(**TINY)).eval()


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vit")
    _vit().save_pretrained(folder)
    return folder


def _fc1_outputs(model: nn.Module, x: torch.Tensor, block: int) -> torch.Tensor:
    """The pre-activations of block `block`'s GELU read by a hand-set hook on fc1: [images, tokens, units]."""
    got: list[torch.Tensor] = []
    fc1 = dict(model.named_modules())[f"{vision_layout(model).mlp(block).module}.fc1"]
    handle = fc1.register_forward_hook(lambda _m, _i, out: got.append(out.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return got[0]


def _picked_images(n: int, seed: int) -> torch.Tensor:
    """The images regions-cluster draws: n of the packaged MNIST set, sorted draw with `seed`."""
    imgs = load_images("mnist")
    pick = np.sort(np.random.default_rng(seed).choice(len(imgs), n, replace=False))
    return imgs.images[torch.from_numpy(pick)]


def test_per_token_codes_are_rows_of_each_token_image_major(vit_folder: Path, tmp_path: Path) -> None:
    site = "vit.layers.1.mlp.activation_fn"
    cfg = ClusterConfig(model=str(vit_folder), sites=(site,), tokens="token", n=12, k=3, fit_on=200)
    numbers = run(cfg, tmp_path / "c").metrics.to_json("regions-cluster", "")
    tables = numbers["tables"]
    assert numbers["numbers"]["n"] == 12 * N_TOKENS  # one code per token, not per image
    z = _fc1_outputs(_vit(), _picked_images(12, cfg.seed), 1)  # [12, 17, 32]
    density = tables["code_density"][site]
    # the CLS share is read from rows 0, 17, 34, ...: a token-major order (or a per-image code) would miss it
    assert density["on_cls"] == pytest.approx(float((z[:, 0] > 0).float().mean()), abs=1e-6)
    assert density["on_patches"] == pytest.approx(float((z[:, 1:] > 0).float().mean()), abs=1e-6)
    assert density["on"] == pytest.approx(float((z > 0).float().mean()), abs=1e-6)
    assert density["soft_mean"] == pytest.approx(float(0.5 * (1 + torch.erf(z / 2**0.5)).mean()), abs=2e-3)
    rows = tables["rows"].values()
    assert {r["label"] for r in rows} == {"digit", "position"}
    assert {r["representation"] for r in rows} == {"code", "soft code", "activation", "direction"}  # GELU: soft


def test_cluster_alias_takes_tokens(vit_folder: Path, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from anatomist.cli.regions import regions_app

    args = ["cluster", str(vit_folder), "--sites", "vit.layers.0.mlp.activation_fn", "--tokens", "token", "--n", "10",
            "--k", "3", "--out", str(tmp_path / "c"), "--json"]
    got = CliRunner().invoke(regions_app, args)
    assert got.exit_code == 0, got.output
    assert json.loads(got.stdout)["numbers"]["n"] == 10 * N_TOKENS


def test_per_image_codes_on_a_vit_and_per_token_codes_refused_off_a_vit(vit_folder: Path, tmp_path: Path) -> None:
    site = "vit.layers.0.mlp.activation_fn"
    cfg = ClusterConfig(model=str(vit_folder), sites=(site,), n=12, k=3, fit_on=200)
    tables = run(cfg, tmp_path / "img").metrics.to_json("regions-cluster", "")["tables"]
    z = _fc1_outputs(_vit(), _picked_images(12, cfg.seed), 0)
    assert tables["code_density"][site]["on"] == pytest.approx(float((z > 0).float().mean()), abs=1e-6)
    assert "on_cls" not in tables["code_density"][site]  # one row per image: no token roles
    bad = ClusterConfig(model="mnist-cnn", sites=("classifier.relu3",), tokens="token", n=12, k=3)
    with pytest.raises(AnatomistError, match="vision transformer"):
        run(bad, tmp_path / "bad")


def test_boundary_density_runs_on_a_vit_classifier(vit_folder: Path, tmp_path: Path) -> None:
    cfg = DensityConfig(model=str(vit_folder), sites=("vit.layers.1.mlp.activation_fn",), pairs=2,
                        same_class_pairs=1, bins=10, exact_pairs=0)
    numbers = run(cfg, tmp_path / "d").metrics.to_json("regions-density", "")
    assert numbers["numbers"]["pairs_with_class_change"] == 2  # the HF output's logits were read
    # every path crosses some of the 17 tokens x 32 units' boundaries
    assert numbers["tables"]["per_site"]["vit.layers.1.mlp.activation_fn"]["crossings_per_path"] > 0


def test_spd_targets_are_the_chosen_blocks_mlp_matrices() -> None:
    layout = vision_layout(_vit())
    assert mlp_targets(layout, -1, ("*",)) == ["vit.layers.1.mlp.*"]
    dec = spd.initial_decomposition(_vit(), mlp_targets(layout, 0, ("*",)), spd.SPDConfig(C=3))
    assert list(dec.targets) == ["vit.layers.0.mlp.fc1", "vit.layers.0.mlp.fc2"]


def test_spd_label_scores_read_against_the_model_by_hand() -> None:
    model = _vit()
    cfg = spd.SPDConfig(C=3, delta_component=True, output_loss="kl")
    dec = spd.initial_decomposition(model, mlp_targets(vision_layout(model), 0, ("*",)), cfg)
    held = load_images("mnist").shuffled(0)
    held = type(held)(held.name, held.images[:40], held.labels[:40], held.n_classes, held.classes)
    scores = label_scores(dec, held)
    with torch.no_grad():
        clean = model(held.images).logits
        ablated = _vit()
        for name in ("fc1", "fc2"):  # removing a matrix keeps its bias
            dict(ablated.named_modules())[f"vit.layers.0.mlp.{name}"].weight.zero_()
        off = ablated(held.images).logits
    assert scores["accuracy"]["clean"] == pytest.approx(float((clean.argmax(-1) == held.labels).float().mean()))
    assert scores["ce"]["clean"] == pytest.approx(float(nn.functional.cross_entropy(clean, held.labels)), rel=1e-5)
    assert scores["ce"]["all_off"] == pytest.approx(float(nn.functional.cross_entropy(off, held.labels)), rel=1e-4)
    assert scores["ce"]["all_off"] != pytest.approx(scores["ce"]["clean"], rel=1e-3)


def test_spd_vision_run_describes_subcomponents_by_token_position(vit_folder: Path, tmp_path: Path) -> None:
    small = spd.SPDConfig(C=4, steps=2, batch_size=3, output_loss="kl", delta_component=True, faithfulness_coeff=0.0)
    cfg = SPDVisionConfig(model=str(vit_folder), block=1, n_eval=10, n_described=1, spd=small)
    got = run(cfg, tmp_path / "spd").metrics.to_json("spd-vision", "")
    assert got["numbers"]["targets"] == ["vit.layers.1.mlp.fc1", "vit.layers.1.mlp.fc2"]
    assert abs(got["numbers"]["kl.all_on"]) < 1e-6  # the deltas complete every matrix
    import json

    described = json.loads((tmp_path / "spd" / "described.json").read_text())
    row = described["vit.layers.1.mlp.fc1"][0]
    assert row["positions"][:2] == ["cls", "patch (0, 0)"] and len(row["by_position"]) == N_TOKENS
    assert len(row["by_class"]) == 10
    with pytest.raises(AnatomistError, match="not a vision transformer"):
        run(SPDVisionConfig(model="mnist-cnn", spd=small), tmp_path / "bad")
