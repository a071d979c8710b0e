"""Bad input a new user gives: one `error:` line and exit status 2 (CLI), or a clear AnatomistError (library)."""

from __future__ import annotations

import math
import pickle
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from torch import nn
from transformers import GPT2Config
from typer.testing import CliRunner

import anatomist.cli as cli_module
import anatomist.core.hub as hub
import anatomist.nets.assets as assets
from anatomist.cli import app, main
from anatomist.core.errors import AnatomistError
from anatomist.core.io import load_json, load_tensors, save_json, save_tensors
from anatomist.core.metrics import Metrics
from anatomist.data.store import ActivationStore
from anatomist.evaluate.dictionary import evaluate_dictionary
from anatomist.features import SAEConfig, make_sae
from anatomist.features.formats import load_sae, save_sae
from anatomist.nets.sites import SiteInfo


def cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    """`anatomist ARGS` in this process: (exit status, stderr lines). Any other exception fails the test."""
    monkeypatch.setattr(sys, "argv", ["anatomist", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    return int(exit_.value.code or 0), capsys.readouterr().err.strip().splitlines()


def one_error_line(lines: list[str]) -> str:
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and not any("Traceback" in ln for ln in lines), lines
    return errors[0]


class _Layers(nn.Module):
    """x [n, 4] -> logits [n, 3]; `zero` makes the first layer output all zeros."""

    def __init__(self, zero: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 3)
        if zero:
            with torch.no_grad():
                self.a.weight.zero_()
                self.a.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


def test_sae_eval_batch_size_0_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    code, err = cli(monkeypatch, capsys, "sae", "eval", str(tmp_path), "--model", "mnist-cnn", "--site", "x",
                    "--batch-size", "0", "--out", str(tmp_path / "out"))
    assert code == 2 and "batch_size" in one_error_line(err)


def test_serve_port_out_of_range_is_one_line_before_building(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = cli(monkeypatch, capsys, "serve", str(tmp_path), "--port", "70000")
    assert code == 2 and "--port 70000" in one_error_line(err) and "0..65535" in err[-1]
    assert not (tmp_path / "report").exists()


class _Payload:
    """A pickle that would make a folder if unpickled by a loader that runs code."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __reduce__(self) -> tuple[Any, ...]:
        import os
        return os.mkdir, (str(self.folder),)


def test_hf_folder_with_a_pickle_is_refused_in_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32).save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": _Payload(tmp_path / "ran")}))
    code, err = cli(monkeypatch, capsys, "sites", str(folder))
    line = one_error_line(err)
    assert code == 2 and str(folder) in line and "refused" in line
    assert not (tmp_path / "ran").exists()


def test_all_zero_activations_give_nan_fvu_not_a_crash() -> None:
    sae = make_sae(SAEConfig(arch="relu", d_in=8, d_sae=16))
    out = evaluate_dictionary(sae, _Layers(zero=True), torch.randn(10, 4), "a", labels=torch.randint(0, 3, (10,)))
    assert math.isnan(out["fvu"]) and out["mse"] == 0.0 and math.isfinite(out["ce_clean"])
    doc = Metrics.from_nested({k: v for k, v in out.items() if k != "density_histogram"}).to_json("sae-eval")
    assert doc["numbers"]["fvu"] is None and "fvu" in doc["non_finite"]  # null in the file, and named


def test_empty_inputs_are_named() -> None:
    sae = make_sae(SAEConfig(arch="relu", d_in=8, d_sae=16))
    with pytest.raises(AnatomistError, match=r"no inputs .*0 sequences"):
        evaluate_dictionary(sae, _Layers(), torch.randn(0, 4), "a", labels=torch.zeros(0, dtype=torch.long))
    with pytest.raises(AnatomistError, match=r"ActivationStore: no inputs \(shape \[0, 4\]\)"):
        ActivationStore(_Layers(), torch.randn(0, 4), ["a"])


def test_sae_takes_float64_and_numpy_inputs() -> None:
    sae = make_sae(SAEConfig(arch="topk", d_in=8, d_sae=16, k=3))
    x = torch.randn(5, 8)
    want = sae.encode(x)
    for given in (x.double(), x.numpy(), x.double().numpy()):
        torch.testing.assert_close(sae.encode(given), want)  # type: ignore[arg-type]
        torch.testing.assert_close(sae(given), sae(x))  # type: ignore[arg-type]
    with pytest.raises(AnatomistError, match="floating point"):
        sae.encode(torch.ones(5, 8, dtype=torch.long))
    with pytest.raises(AnatomistError, match="tensor or numpy array"):
        sae.encode([[0.0] * 8])  # type: ignore[arg-type]
    assert isinstance(np.asarray(sae.encode(x.numpy()).detach()), np.ndarray)  # type: ignore[arg-type]


def test_nan_weights_are_refused_naming_file_and_tensor(tmp_path: Path) -> None:
    save_sae(make_sae(SAEConfig(arch="relu", d_in=8, d_sae=16)), tmp_path)
    weights = load_tensors(tmp_path / "weights.safetensors")
    weights["W_dec"][3, 1] = float("nan")
    save_tensors(tmp_path / "weights.safetensors", weights)
    with pytest.raises(AnatomistError, match=r"weights\.safetensors: tensor 'W_dec' holds 1 non-finite"):
        load_sae(tmp_path)


def test_saelens_config_without_architecture_reads_its_k(tmp_path: Path) -> None:
    sae = make_sae(SAEConfig(arch="topk", d_in=8, d_sae=16, k=3))
    save_sae(sae, tmp_path, format="saelens")
    cfg = load_json(tmp_path / "cfg.json")
    del cfg["architecture"]
    save_json(tmp_path / "cfg.json", cfg)
    back = load_sae(tmp_path)
    assert back.cfg.arch == "topk" and back.cfg.k == 3  # type: ignore[attr-defined]
    x = torch.randn(4, 8) * 3
    torch.testing.assert_close(back.encode(x), sae.encode(x))
    save_json(tmp_path / "cfg.json", {**cfg, "activation_fn": "relu"})  # says relu, has a k: ambiguous
    with pytest.raises(AnatomistError, match=r"cfg\.json: no 'architecture', activation_fn 'relu' but a 'k' \(3\)"):
        load_sae(tmp_path)


def _hub_must_not_be_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the hub client was asked")
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", refuse)


def test_mistyped_model_name_offline_fails_at_once(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _hub_must_not_be_asked(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err = cli(monkeypatch, capsys, "sites", "smolm2")
    line = one_error_line(err)
    assert code == 2 and "did you mean 'smollm2'" in line and "offline" in line


def test_mistyped_model_name_without_network_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    _hub_must_not_be_asked(monkeypatch)
    for var in hub.OFFLINE_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub.hf_constants, "HF_HUB_OFFLINE", False)
    asked: list[tuple[str, int]] = []

    def no_network(address: tuple[str, int], timeout: float | None = None) -> None:
        asked.append(address)
        raise OSError("Network is unreachable")
    monkeypatch.setattr(hub.socket, "create_connection", no_network)
    with pytest.raises(AnatomistError, match=r"did you mean 'smollm2'.*unreachable"):
        assets.load_model("smolm2")
    assert asked == [("huggingface.co", 443)]


def test_sites_off_a_terminal_prints_whole_module_names(monkeypatch: pytest.MonkeyPatch) -> None:
    long_name = "encoder." + ".".join(f"block_{i}" for i in range(30)) + ".attention.output_projection"
    monkeypatch.setattr(cli_module, "load_model", lambda name: SimpleNamespace(model=None, sample_input=lambda: None))
    monkeypatch.setattr(cli_module, "list_sites", lambda model, x: [SiteInfo(long_name, "Linear", (2, 8), (2, 4))])
    result = CliRunner().invoke(app, ["sites", "any"])  # stdout is not a terminal here, as in a pipe
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["module\ttype\tinput\toutput", f"{long_name}\tLinear\t[2, 8]\t[2, 4]"]


@pytest.mark.parametrize("method", ["spd", "apd", "l3d"])
def test_method_help_names_an_experiment_of_that_method(method: str) -> None:
    result = CliRunner().invoke(app, [method, "run", "--help"], terminal_width=200)
    assert result.exit_code == 0
    examples = re.findall(r"experiments/(\w+)\.yaml", result.stdout)
    assert examples == [f"{method}_tms_5_2"]
