"""Dictionaries round-trip exactly through the anatomist and SAELens folders; sparsify folders import; bad
folders give errors that name the file, the key or the shape."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from anatomist.core import AnatomistError
from anatomist.features import SAEConfig, SparseDictionary, detect_format, formats, load_sae, make_sae, save_sae


def _k(arch: str, k: int) -> dict[str, int]:
    """k only for the architectures that have one (each architecture has its own config class)."""
    return {"k": k} if arch in ("topk", "batchtopk") else {}


def _random_sae(arch: str, d_out: int | None = None, **kw: object) -> SparseDictionary:
    torch.manual_seed(0)
    sae = make_sae(SAEConfig.parse({"arch": arch, "d_in": 12, "d_sae": 48, **_k(arch, 5), "d_out": d_out, **kw}))
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if arch == "batchtopk":  # as after training: an estimated inference threshold
            sae.threshold.fill_(0.05)
        if arch == "jumprelu":  # thresholds are never negative (training clamps them at 0)
            sae.threshold.abs_()
    return sae


def _same_outputs(a: SparseDictionary, b: SparseDictionary, d_in: int = 12) -> None:
    x = torch.randn(64, d_in)
    torch.testing.assert_close(a.encode(x), b.encode(x), rtol=0, atol=0)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


ARCHS = ["relu", "relu-tied", "topk", "batchtopk", "jumprelu"]


@pytest.mark.parametrize("arch", ARCHS)
def test_anatomist_roundtrip_exact(tmp_path: Path, arch: str) -> None:
    sae = _random_sae(arch)
    save_sae(sae, tmp_path / "sae", metadata={"model_name": "smollm2", "site": "model.layers.6"})
    assert detect_format(tmp_path / "sae") == "anatomist"
    back = load_sae(tmp_path / "sae")
    assert type(back) is type(sae) and back.cfg == sae.cfg
    assert back.metadata["site"] == "model.layers.6" and back.metadata["source_format"] == "anatomist"
    for key, value in sae.export_weights().items():
        assert torch.equal(back.export_weights()[key], value), key
    _same_outputs(sae, back)


@pytest.mark.parametrize("arch", ARCHS)
def test_saelens_roundtrip_exact(tmp_path: Path, arch: str) -> None:
    sae = _random_sae(arch)
    save_sae(sae, tmp_path / "sl", format="saelens", metadata={"model_name": "smollm2", "site": "model.layers.6"})
    cfg = json.loads((tmp_path / "sl" / "cfg.json").read_text())
    expected = {"relu": "standard", "relu-tied": "standard", "topk": "topk", "batchtopk": "jumprelu"}
    assert cfg["architecture"] == expected.get(arch, arch)
    assert cfg["metadata"]["sae_lens_version"].startswith("6.")
    assert cfg["metadata"]["model_name"] == "smollm2" and cfg["metadata"]["hook_name"] == "model.layers.6"
    back = load_sae(tmp_path / "sl")
    assert back.metadata["source_format"] == "saelens" and back.metadata["model_name"] == "smollm2"
    _same_outputs(sae, back)
    # and back to anatomist: the same weights again
    save_sae(back, tmp_path / "again")
    again = load_sae(tmp_path / "again")
    _same_outputs(sae, again)


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "batchtopk"])
def test_saelens_transcoder_folds_centring(tmp_path: Path, arch: str) -> None:
    sae = _random_sae(arch, d_out=7)
    assert not sae.cfg.centers_input
    centring = _random_sae(arch, d_out=12, apply_b_dec_to_input=True)  # same width in and out, centres
    for i, model in enumerate([sae, centring]):
        save_sae(model, tmp_path / f"t{i}", format="saelens", metadata={"target_site": "mlp:output"})
        cfg = json.loads((tmp_path / f"t{i}" / "cfg.json").read_text())
        assert cfg["architecture"].endswith("transcoder") and cfg["apply_b_dec_to_input"] is False
        assert cfg["metadata"]["hook_name_out"] == "mlp:output"
        back = load_sae(tmp_path / f"t{i}")
        assert back.cfg.out_dim == model.cfg.out_dim
        x = torch.randn(32, 12)
        torch.testing.assert_close(back.encode(x), model.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(back(x), model(x), rtol=1e-5, atol=1e-5)


def test_saelens_refuses_topk_transcoder_and_untrained_batchtopk(tmp_path: Path) -> None:
    with pytest.raises(AnatomistError, match="no TopK transcoder"):
        save_sae(_random_sae("topk", d_out=7), tmp_path / "a", format="saelens")
    fresh = make_sae(SAEConfig(arch="batchtopk", d_in=4, d_sae=8, k=2))
    with pytest.raises(AnatomistError, match="no inference threshold"):
        save_sae(fresh, tmp_path / "b", format="saelens")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _write_saelens(folder: Path, cfg: dict, weights: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(weights, str(folder / "sae_weights.safetensors"))
    return folder


def test_saelens_pre6_layout(tmp_path: Path) -> None:
    """Old SAELens files: names at top level, activation_fn_str, activation_fn_kwargs.k, boolean normalisation."""
    torch.manual_seed(3)
    w = {"W_enc": torch.randn(6, 20), "b_enc": torch.randn(20), "W_dec": torch.randn(20, 6), "b_dec": torch.randn(6)}
    old = {
        "d_in": 6,
        "d_sae": 20,
        "model_name": "gpt2-small",
        "hook_point": "blocks.8.hook_resid_pre",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 4},
        "normalize_activations": False,
        "apply_b_dec_to_input": True,
        "dtype": "torch.float32",
        "sae_lens_training_version": "3.12.0",
    }
    sae = load_sae(_write_saelens(tmp_path / "old", old, w))
    assert sae.cfg.arch == "topk" and sae.cfg.k == 4
    assert sae.metadata["model_name"] == "gpt2-small" and sae.metadata["hook_name"] == "blocks.8.hook_resid_pre"
    x = torch.randn(10, 6)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    top = pre.topk(4, dim=-1)
    expected = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    torch.testing.assert_close(sae.encode(x), expected)


def test_saelens_topk_rescaled_by_decoder_norm_is_folded(tmp_path: Path) -> None:
    torch.manual_seed(4)
    w = {"W_enc": torch.randn(6, 20), "b_enc": torch.randn(20), "W_dec": torch.randn(20, 6), "b_dec": torch.randn(6)}
    cfg = {
        "architecture": "topk",
        "d_in": 6,
        "d_sae": 20,
        "k": 3,
        "rescale_acts_by_decoder_norm": True,
        "metadata": {"sae_lens_version": "6.5.0"},
    }
    sae = load_sae(_write_saelens(tmp_path / "r", cfg, w))
    x = torch.randn(10, 6)
    norms = w["W_dec"].norm(dim=-1)
    pre = ((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]) * norms  # SAELens: rank by pre * ||W_dec||
    top = pre.topk(3, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    expected = (acts / norms) @ w["W_dec"] + w["b_dec"]
    torch.testing.assert_close(sae(x), expected, rtol=1e-5, atol=1e-5)


def test_saelens_missing_keys_names_file_and_keys(tmp_path: Path) -> None:
    cfg = {"architecture": "jumprelu", "d_in": 4, "d_sae": 8, "metadata": {"sae_lens_version": "6.1.0"}}
    folder = _write_saelens(tmp_path / "m", cfg, {"W_enc": torch.zeros(4, 8), "W_dec": torch.zeros(8, 4)})
    with pytest.raises(AnatomistError) as err:
        load_sae(folder)
    msg = str(err.value)
    assert "sae_weights.safetensors" in msg and "b_enc" in msg and "b_dec" in msg and "threshold" in msg


def test_shape_mismatch_names_key_and_both_shapes(tmp_path: Path) -> None:
    cfg = {"architecture": "standard", "d_in": 4, "d_sae": 8, "metadata": {"sae_lens_version": "6.1.0"}}
    w = {"W_enc": torch.zeros(4, 8), "b_enc": torch.zeros(8), "W_dec": torch.zeros(8, 5), "b_dec": torch.zeros(4)}
    with pytest.raises(AnatomistError) as err:
        load_sae(_write_saelens(tmp_path / "s", cfg, w))
    msg = str(err.value)
    assert "'W_dec'" in msg and "(8, 5)" in msg and "(8, 4)" in msg and "sae_weights.safetensors" in msg


def test_unsupported_saelens_variants_are_refused_by_name(tmp_path: Path) -> None:
    w = {"W_enc": torch.zeros(4, 8), "b_enc": torch.zeros(8), "W_dec": torch.zeros(8, 4), "b_dec": torch.zeros(4)}
    base = {"d_in": 4, "d_sae": 8, "metadata": {"sae_lens_version": "6.1.0"}}
    with pytest.raises(AnatomistError, match="'gated'"):
        load_sae(_write_saelens(tmp_path / "g", {**base, "architecture": "gated"}, w))
    with pytest.raises(AnatomistError, match="layer_norm"):
        load_sae(
            _write_saelens(
                tmp_path / "n", {**base, "architecture": "standard", "normalize_activations": "layer_norm"}, w
            )
        )


def test_unknown_folder_names_folder_and_expectation(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hi")
    with pytest.raises(AnatomistError) as err:
        load_sae(tmp_path / "junk")
    assert "junk" in str(err.value) and "sae_weights.safetensors" in str(err.value)
    with pytest.raises(AnatomistError, match="no such folder"):
        load_sae(tmp_path / "missing")
    with pytest.raises(AnatomistError, match="not a sparse-dictionary folder; refusing"):
        save_sae(_random_sae("relu"), tmp_path / "junk")
    assert (tmp_path / "junk" / "notes.txt").read_text() == "hi"


def test_sparsify_folder_import(tmp_path: Path) -> None:
    """A folder laid out as sparsify writes it: encoder.weight [d_sae, d_in], relu then top-k, x - b_dec."""
    torch.manual_seed(5)
    run = tmp_path / "run"
    hook = run / "layers.3"
    hook.mkdir(parents=True)
    enc_w, enc_b, w_dec, b_dec = torch.randn(24, 6), torch.randn(24), torch.randn(24, 6), torch.randn(6)
    (hook / "cfg.json").write_text(
        json.dumps(
            {
                "activation": "topk",
                "expansion_factor": 4,
                "normalize_decoder": True,
                "num_latents": 0,
                "k": 5,
                "multi_topk": False,
                "skip_connection": False,
                "transcode": False,
                "d_in": 6,
            }
        )
    )
    save_file(
        {"encoder.weight": enc_w, "encoder.bias": enc_b, "W_dec": w_dec, "b_dec": b_dec}, str(hook / "sae.safetensors")
    )
    with pytest.raises(AnatomistError, match="layers.3"):  # the run folder holds one folder per hook point
        load_sae(run)
    sae = load_sae(hook)
    assert sae.cfg.arch == "topk" and sae.cfg.d_sae == 24 and sae.metadata["site"] == "layers.3"
    x = torch.randn(10, 6)
    pre = torch.relu((x - b_dec) @ enc_w.t() + enc_b)
    top = pre.topk(5, dim=-1)
    expected = torch.zeros_like(pre).scatter(-1, top.indices, top.values) @ w_dec + b_dec
    torch.testing.assert_close(sae(x), expected, rtol=1e-5, atol=1e-5)


def test_a_config_written_with_every_architectures_fields_still_loads(tmp_path: Path) -> None:
    """Before one config class per architecture, config.yaml held every field (k: null on a relu SAE, ...)."""
    sae = _random_sae("relu")
    save_sae(sae, tmp_path / "old")
    legacy = {**yaml.safe_load((tmp_path / "old" / "config.yaml").read_text()), "k": None, "l0_coeff": 1.0,
              "auxk_alpha": 0.03125, "auxk_k": None, "batchtopk_threshold_beta": 0.99, "sparse_kernel": True,
              "jumprelu_init_threshold": 0.001, "jumprelu_bandwidth": 0.001}
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(legacy))
    loaded = load_sae(tmp_path / "old")
    assert loaded.cfg == sae.cfg and torch.equal(loaded.W_dec, sae.W_dec)


def test_jumprelu_thresholds_load_bit_for_bit(tmp_path: Path) -> None:
    """Gemma-Scope-style JumpReLU weights in a SAELens folder: the loaded threshold is the file's, bit for bit
    (exp(log(t)) is not t in float32), so a pre-activation exactly at the threshold stays off as in the file."""
    torch.manual_seed(5)
    d_in, d_sae = 6, 20
    w = {"W_enc": torch.randn(d_in, d_sae), "b_enc": torch.randn(d_sae) * 0.1, "W_dec": torch.randn(d_sae, d_in),
         "b_dec": torch.randn(d_in) * 0.1, "threshold": torch.rand(d_sae) * 0.2 + 1e-3}
    cfg = {"architecture": "jumprelu", "d_in": d_in, "d_sae": d_sae, "metadata": {"sae_lens_version": "6.5.0"}}
    sae = load_sae(_write_saelens(tmp_path / "j", cfg, w))
    assert torch.equal(sae.threshold.detach(), w["threshold"])
    save_sae(sae, tmp_path / "back", format="saelens")
    again = load_sae(tmp_path / "back")
    assert torch.equal(again.threshold.detach(), w["threshold"])


def test_hub_references_fail_at_once_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "hub_reachable", lambda: False)
    with pytest.raises(AnatomistError, match=r"hf://org/saes/layer_6: the Hugging Face hub is unreachable"):
        load_sae("hf://org/saes/layer_6")
    with pytest.raises(AnatomistError, match=r"hf://org: a hub reference is hf://ORG/REPO\[/SUBFOLDER\]"):
        load_sae("hf://org")
    if importlib.util.find_spec("sae_lens") is None:
        with pytest.raises(AnatomistError, match="SAELens release names need sae_lens installed"):
            load_sae("saelens:gpt2-small-res-jb:blocks.8.hook_resid_pre")
