"""Bilinear lens: the tensor reproduces the layer exactly; eigenvectors reproduce each output; clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from anatomist import AnatomistError
from anatomist.cli.mechanisms import bilinear_app
from anatomist.mechanisms import bilinear
from anatomist.mechanisms.bilinear import BilinearLayer, BilinearMLP
from anatomist.nets.toys import toy_config
from anatomist.nets.toys import train as train_module


def _layer(d_in: int, d_hidden: int, bias: bool, seed: int = 0) -> BilinearLayer:
    torch.manual_seed(seed)
    layer = BilinearLayer(d_in, d_hidden, bias=bias).double()
    if bias:  # nn.Linear's default biases are small; make them matter
        with torch.no_grad():
            layer.w.bias.normal_()
            layer.v.bias.normal_()
    return layer


@pytest.mark.parametrize("bias", [False, True])
def test_tensor_contraction_reproduces_layer_exactly(bias: bool) -> None:
    layer = _layer(7, 5, bias)
    x = torch.randn(64, 7, dtype=torch.float64)
    wts = bilinear.bilinear_weights(layer)
    B = bilinear.interaction_tensor(wts.w, wts.v)
    assert B.shape == (5, 8 if bias else 7, 8 if bias else 7)
    assert torch.equal(B, B.transpose(1, 2))  # symmetrised
    torch.testing.assert_close(bilinear.contract(B, wts.inputs(x)), layer(x), rtol=1e-12, atol=1e-12)


def test_interaction_matrix_is_the_tensor_projected() -> None:
    W, V = torch.randn(2, 6, 4, dtype=torch.float64).unbind(0)
    u = torch.randn(6, dtype=torch.float64)
    B = bilinear.interaction_tensor(W, V)
    Q = bilinear.interaction_matrix(W, V, u)
    torch.testing.assert_close(Q, torch.einsum("a,aij->ij", u, B))
    x = torch.randn(10, 4, dtype=torch.float64)
    torch.testing.assert_close(torch.einsum("bi,ij,bj->b", x, Q, x), ((W @ x.T) * (V @ x.T)).T @ u)


@pytest.mark.parametrize("bias", [False, True])
def test_all_eigenvectors_reproduce_every_output(bias: bool) -> None:
    torch.manual_seed(1)
    model = BilinearMLP(9, 12, 4, bias=bias).double()
    if bias:
        with torch.no_grad():
            for lin in (model.bilinear.w, model.bilinear.v, model.head):
                lin.bias.normal_()
    dec = bilinear.decompose_mlp(model.bilinear, model.head)
    x = torch.randn(32, 9, dtype=torch.float64)
    torch.testing.assert_close(dec.forward(x), model(x), rtol=1e-10, atol=1e-10)
    # eigenvectors are orthonormal and the eigenvalues sorted by magnitude
    eye = torch.eye(dec.q.shape[-1], dtype=torch.float64).expand_as(dec.q)
    torch.testing.assert_close(dec.eigen.vectors.transpose(1, 2) @ dec.eigen.vectors, eye)
    assert (dec.eigen.values.abs().diff(dim=-1) <= 0).all()
    torch.testing.assert_close(dec.eigen.matrix(), dec.q)


def test_truncation_error_falls_monotonically_with_eigenvectors_kept() -> None:
    torch.manual_seed(2)
    model = BilinearMLP(10, 16, 3).double()
    dec = bilinear.decompose_mlp(model.bilinear, model.head)
    errors = torch.stack([torch.linalg.matrix_norm(dec.q - dec.eigen.matrix(top=n)) for n in range(11)])  # [11, 3]
    assert (errors.diff(dim=0) <= 1e-12).all()
    assert (errors[0] > 0).all() and errors[-1].max() < 1e-10
    # keeping the largest-|λ| eigenvectors beats keeping the same number of smallest ones
    n = 3
    vecs, vals = dec.eigen.vectors[..., -n:], dec.eigen.values[..., -n:]
    smallest = (vecs * vals[..., None, :]) @ vecs.transpose(-1, -2)
    assert (errors[n] < torch.linalg.matrix_norm(dec.q - smallest)).all()


def test_float32_model_decomposes_close_to_its_output() -> None:
    torch.manual_seed(3)
    model = BilinearMLP(20, 30, 5, bias=True)
    dec = bilinear.decompose_mlp(model.bilinear, model.head)
    x = torch.randn(8, 20)
    torch.testing.assert_close(dec.forward(x), model(x), rtol=1e-4, atol=1e-5)


def test_find_bilinear_layers_and_errors() -> None:
    model = nn.Sequential(nn.Linear(3, 4), BilinearLayer(4, 2))
    assert list(bilinear.find_bilinear_layers(model)) == ["1"]
    with pytest.raises(AnatomistError, match="no bilinear layer"):
        bilinear.find_bilinear_layers(nn.Sequential(nn.Linear(3, 4), nn.ReLU()))
    with pytest.raises(AnatomistError, match=r"mlp: Linear is not a bilinear layer"):
        bilinear.bilinear_weights(nn.Linear(3, 4), name="mlp")
    W = torch.randn(4, 3)
    with pytest.raises(AnatomistError, match=r"\[4, 3\] and \[4, 2\]"):
        bilinear.interaction_tensor(W, torch.randn(4, 2))
    with pytest.raises(AnatomistError, match="output directions"):
        bilinear.output_interactions(W, W, torch.randn(2, 5))


def test_mnist_experiment_and_cli(tmp_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the toys' final held-out loss averages 2^17 noisy digits; 2,000 are plenty for this test
    evaluate = train_module.evaluate_loss
    monkeypatch.setattr(train_module, "evaluate_loss", lambda model, config, *_: evaluate(model, config, 2000))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: a second thread only adds barriers on a busy machine
    try:
        result = CliRunner().invoke(bilinear_app, ["mnist", "--out", str(tmp_path), "--steps", "150", "--json"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    m = json.loads(result.output)["numbers"]
    acc = {k.removeprefix("truncated_accuracy."): v for k, v in m.items() if k.startswith("truncated_accuracy.")}
    assert m["test_digits"] == 1000 and m["test_accuracy"] > 0.8
    assert acc["all"] == pytest.approx(m["test_accuracy"], abs=1e-6)  # all eigenvectors: the model itself
    assert acc["32"] > acc["1"]
    assert (tmp_path / "eigenvectors.png").is_file() and (tmp_path / "truncation.png").is_file()
    with pytest.raises(AnatomistError, match="no planted ground truth"):
        toy_config("bilinear-mnist").ground_truth(BilinearMLP(784, 4, 10))
