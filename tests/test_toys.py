"""Toy models: shapes and formulas, the TMS tie, ground truth, training outcomes, cache and CLI."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from anatomist.cli.toy import toy_app
from anatomist.core.errors import AnatomistError
from anatomist.core.lock import LOCK
from anatomist.nets.toys import (
    TOYS,
    ResidMLPConfig,
    TMSConfig,
    TrainedToy,
    evaluate_loss,
    load_toy,
    naive_loss,
    toy_config,
    train_toy,
)


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("ANATOMIST_CACHE", str(tmp_path / "cache"))
    # These nets are tiny: a second intra-op thread buys nothing and, on a busy shared machine,
    # OpenMP barriers make multi-threaded steps several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_registry_names_and_unknown_name() -> None:
    assert set(TOYS) == {
        "tms-5-2",
        "tms-40-10",
        "tms-5-2-id",
        "tms-40-10-id",
        "resid-mlp-1",
        "resid-mlp-2",
        "resid-mlp-3",
        "bilinear-mnist",
        "moe-lm",
        "llama-lm-1",
        "llama-lm-2",
        "vit-mnist",
        "circuit-10-5-10",
        "high-rank-30-10-30",
        "squared-mlp",
    }
    with pytest.raises(AnatomistError, match=r"unknown toy 'tms-5-3'.*tms-40-10.*resid-mlp-3"):
        toy_config("tms-5-3")


@pytest.mark.parametrize("name", ["tms-5-2", "tms-40-10", "tms-5-2-id", "tms-40-10-id"])
def test_tms_forward_matches_formula(name: str) -> None:
    cfg = toy_config(name)
    assert isinstance(cfg, TMSConfig)
    model = cfg.build()
    with torch.no_grad():
        model.b_final.normal_()
    x, y = cfg.sample_batch(64, torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (64, cfg.n_features) and torch.equal(x, y)
    W, b = model.W, model.b_final
    expected = F.relu(x @ W.T @ W + b)  # x̂ = ReLU(WᵀW x + b), batched as rows
    assert torch.allclose(model(x), expected, atol=1e-6)
    assert (model.hidden is not None) == cfg.identity_hidden
    if model.hidden is not None:
        assert torch.equal(model.hidden.weight, torch.eye(cfg.d_hidden))
        assert not model.hidden.weight.requires_grad


def test_tms_tie_is_one_parameter() -> None:
    model = toy_config("tms-5-2-id").build()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"linear1.weight", "b_final"}
    assert set(model.state_dict()) == {"linear1.weight", "hidden.weight", "b_final"}
    assert model.linear2.weight.shape == (5, 2)
    assert model.linear2.weight.data_ptr() == model.linear1.weight.data_ptr()  # a view, not a copy
    with torch.no_grad():
        model.linear1.weight[0, 3] = 7.0
    assert model.linear2.weight[3, 0] == 7.0
    # the tie survives moving and copying the model
    copy = TOYS["tms-5-2"].build()
    copy.load_state_dict(model.state_dict(), strict=False)
    assert torch.equal(copy.linear2.weight, model.linear1.weight.T)


def test_sparse_data_statistics() -> None:
    g = torch.Generator().manual_seed(0)
    x, _ = toy_config("tms-40-10").sample_batch(20_000, g)
    assert abs((x > 0).float().mean().item() - 0.05) < 0.003
    assert x.min() >= 0 and x.max() <= 1
    x, y = toy_config("resid-mlp-1").sample_batch(20_000, g)
    assert abs((x != 0).float().mean().item() - 0.01) < 0.002
    assert x.min() >= -1 and x.max() <= 1 and (x < 0).any()
    assert torch.equal(y, x + F.relu(x))


@pytest.mark.parametrize("name", ["resid-mlp-1", "resid-mlp-2", "resid-mlp-3"])
def test_resid_mlp_forward_matches_formula(name: str) -> None:
    cfg = toy_config(name)
    assert isinstance(cfg, ResidMLPConfig)
    model = cfg.build()
    W_E = model.W_E
    assert W_E.shape == (cfg.n_features, 1000)
    assert torch.allclose(W_E.norm(dim=1), torch.ones(cfg.n_features), atol=1e-5)
    assert torch.equal(model.W_U, W_E.T)
    assert torch.equal(cfg.build().W_E, W_E)  # fixed by the seed
    assert not any(n == "W_E" for n, _ in model.named_parameters())  # a buffer: never trained
    x, y = cfg.sample_batch(32, torch.Generator().manual_seed(2))
    resid = x @ W_E
    for i in range(cfg.n_layers):
        W_in = model.get_submodule(f"layers.{i}.mlp_in").weight
        W_out = model.get_submodule(f"layers.{i}.mlp_out").weight
        assert W_in.shape == (cfg.d_mlp, 1000) and W_out.shape == (1000, cfg.d_mlp)
        resid = resid + F.relu(resid @ W_in.T) @ W_out.T
    out = model(x)
    assert out.shape == y.shape == (32, cfg.n_features)
    assert torch.allclose(out, resid @ W_E.T, atol=1e-5)


def test_tms_ground_truth_components_sum_to_weights() -> None:
    cfg = toy_config("tms-40-10-id")
    model = cfg.build()
    gt = cfg.ground_truth(model)
    W = model.W.detach()
    assert gt.components["linear1"].shape == (40, 10, 40)
    assert gt.components["linear2"].shape == (40, 40, 10)
    assert torch.allclose(gt.components["linear1"].sum(0), W)  # Σ_i W[:, i] e_iᵀ = W
    assert torch.allclose(gt.components["linear2"].sum(0), W.T)
    assert torch.allclose(gt.components["hidden"].sum(0), torch.eye(10))
    assert gt.n_components == {"linear1": 40, "linear2": 40, "hidden": 10}
    for name, comps in gt.components.items():
        assert torch.allclose(comps.sum(0), gt.weights[name])
        assert comps.shape[1:] == model.get_submodule(name).weight.shape  # nn.Linear layout
        assert (torch.linalg.matrix_rank(comps) == 1).all()
    assert torch.equal(gt.feature_directions, W.T)
    u, v = gt.factors("linear1")
    assert torch.allclose(u.abs(), W.T.abs(), atol=1e-5)  # u_i = ±W[:, i]
    assert torch.allclose(torch.einsum("co,ci->coi", u, v), gt.components["linear1"], atol=1e-5)
    x = torch.rand(3, 40)
    assert torch.equal(gt.label_fn(x), x)


def test_resid_mlp_ground_truth() -> None:
    cfg = toy_config("resid-mlp-2")
    model = cfg.build()
    gt = cfg.ground_truth(model)
    assert torch.equal(gt.feature_directions, model.W_E)
    assert set(gt.weights) == {"layers.0.mlp_in", "layers.0.mlp_out", "layers.1.mlp_in", "layers.1.mlp_out"}
    assert gt.components == {}
    x = torch.tensor([[-0.5, 0.5]])
    assert torch.equal(gt.label_fn(x), torch.tensor([[-0.5, 1.0]]))
    assert naive_loss(cfg) == pytest.approx(0.01 / 6)


def test_naive_loss_is_loss_of_identity_output() -> None:
    cfg = toy_config("resid-mlp-1")
    x, y = cfg.sample_batch(50_000, torch.Generator().manual_seed(3))
    assert cfg.loss(x, y).item() == pytest.approx(naive_loss(cfg), rel=0.05)


def test_tms_5_2_learns_a_pentagon() -> None:
    toy = train_toy("tms-5-2", steps=1500, eval_samples=2**14)  # converges well before the published 10k
    W = toy.model.W.detach()
    angles = torch.atan2(W[1], W[0]).sort().values * 180 / math.pi
    gaps = torch.diff(torch.cat([angles, angles[:1] + 360]))
    assert torch.allclose(gaps, torch.full((5,), 72.0), atol=5.0), gaps
    norms = W.norm(dim=0)
    assert ((norms > 0.9) & (norms < 1.3)).all(), norms  # ≈ 1 (slightly above, offset by a negative bias)
    assert norms.max() / norms.min() < 1.05
    assert toy.final_loss < 0.01  # the all-zero output scores E[x²] = 0.05/3 ≈ 0.0167


def test_resid_mlp_1_beats_naive_baseline() -> None:
    toy = train_toy("resid-mlp-1", steps=60, eval_samples=2**14)  # the published run is 1000 steps
    assert toy.final_loss < 0.7 * naive_loss(toy.config)
    assert toy.metrics["naive_loss"] == naive_loss(toy.config)


@pytest.mark.slow
def test_resid_mlp_1_default_training_beats_monosemantic_baseline() -> None:
    toy = train_toy("resid-mlp-1")
    assert toy.final_loss < toy.metrics["monosemantic_loss"] < toy.metrics["naive_loss"]


def test_load_toy_caches_by_config_hash(tmp_path: Path) -> None:
    first = load_toy("tms-5-2", steps=50)
    assert not first.from_cache and first.path is not None
    assert first.path.parent == tmp_path / "cache" / "toys" and first.path.name.startswith("tms-5-2-")
    weights = first.path / "model.safetensors"
    mtime = weights.stat().st_mtime_ns

    second = load_toy("tms-5-2", steps=50)
    assert second.from_cache and second.path == first.path
    assert weights.stat().st_mtime_ns == mtime  # not retrained, not rewritten
    assert second.final_loss == first.final_loss
    assert torch.equal(second.model.W, first.model.W)
    assert torch.equal(second.model.linear2.weight, second.model.W.T)  # tie restored on load

    other = load_toy("tms-5-2", steps=50, seed=1)  # another config, another entry
    assert not other.from_cache and other.path != first.path


def test_training_is_deterministic_and_evaluate_matches() -> None:
    a = train_toy("tms-5-2", steps=30, seed=4)
    b = train_toy("tms-5-2", steps=30, seed=4)
    assert torch.equal(a.model.W, b.model.W)
    assert a.final_loss == pytest.approx(evaluate_loss(b.model, b.config))
    x, y = a.sample_batch(16, torch.Generator().manual_seed(0))
    assert x.shape == (16, 5)


def test_save_and_load_run_folder(tmp_path: Path) -> None:
    toy = train_toy("resid-mlp-3", steps=5, eval_samples=2048)
    toy.save(tmp_path / "run")
    back = TrainedToy.load(tmp_path / "run")
    assert back.config == toy.config
    for k, v in toy.model.state_dict().items():
        assert torch.equal(back.model.state_dict()[k], v)
    assert back.final_loss == toy.final_loss


def test_cli_train_writes_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(toy_app, ["train", "tms-5-2", "--out", str(out), "--steps", "20", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)["numbers"]
    assert summary["name"] == "tms-5-2" and summary["steps"] == 20 and summary["final_loss"] > 0
    files = {p.name for p in out.iterdir() if p.name != LOCK}  # the lock file stays: see core.lock
    assert files == {"config.yaml", "metrics.json", "provenance.json", "toy.yaml", "model.safetensors", "toy.json",
                     "tms_columns.png"}
    assert TrainedToy.load(out).config.steps == 20

    result = CliRunner().invoke(toy_app, ["train", "tms-5-2", "--out", str(tmp_path / "r2"), "--steps", "5"])
    assert result.exit_code == 0 and "held-out loss" in result.output

    result = CliRunner().invoke(toy_app, ["train", "nope", "--out", str(tmp_path / "r3")])
    assert isinstance(result.exception, AnatomistError)
    assert "resid-mlp-1" in str(result.exception)
