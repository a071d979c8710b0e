"""Vision transformers: sites and splices on the four Hugging Face families match hand-written forwards."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

from anatomist.core.errors import AnatomistError
from anatomist.evaluate.vision import token_role_metrics
from anatomist.features.bases import fit_basis
from anatomist.nets.sites import capture, primary, splice
from anatomist.nets.vision import VisionLayout, vision_layout

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, image_size=28,
            patch_size=7, num_channels=1)


def _vit() -> nn.Module:
    return ViTForImageClassification(ViTConfig(**TINY, num_labels=10))


def _vit_bare() -> nn.Module:
    return ViTModel(ViTConfig(**TINY))


def _clip() -> nn.Module:
    return CLIPVisionModel(CLIPVisionConfig(**TINY))


def _siglip() -> nn.Module:
    return SiglipVisionModel(SiglipVisionConfig(**TINY))


def _dinov2() -> nn.Module:
    return Dinov2Model(Dinov2Config(**TINY, layerscale_value=0.5))


def _dinov2_registers() -> nn.Module:
    return Dinov2WithRegistersModel(Dinov2WithRegistersConfig(**TINY, num_register_tokens=2, layerscale_value=0.5))


FAMILIES: dict[str, Callable[[], nn.Module]] = {
    "vit-classifier": _vit, "vit": _vit_bare, "clip": _clip, "siglip": _siglip, "dinov2": _dinov2,
    "dinov2-registers": _dinov2_registers,
}
# tokens before the patches: (CLS, registers)
PREFIX = {"vit-classifier": (True, 0), "vit": (True, 0), "clip": (True, 0), "siglip": (False, 0),
          "dinov2": (True, 0), "dinov2-registers": (True, 2)}


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return FAMILIES[name]().eval()


def _images(n: int = 2) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def _hooks(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Hooks per module (transformers registers some of its own, e.g. to record hidden states)."""
    return {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in model.named_modules()}


def _hidden_states(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return tuple(model(x, output_hidden_states=True).hidden_states)


def _layer_scales(model: nn.Module, layout: VisionLayout, k: int) -> tuple[Callable[[torch.Tensor], torch.Tensor], ...]:
    """DINOv2 multiplies each sublayer's output by its layer scale before adding it; the others add it as is."""
    block = dict(model.named_modules())[f"{layout.layers}.{k}"]
    if hasattr(block, "layer_scale1"):
        return block.layer_scale1, block.layer_scale2
    return (lambda t: t), (lambda t: t)


@pytest.mark.parametrize("name", FAMILIES)
def test_layout_finds_blocks_token_roles_and_widths(name: str) -> None:
    layout = vision_layout(_model(name))
    has_cls, registers = PREFIX[name]
    assert (layout.n_layers, layout.d_model, layout.grid()) == (3, 32, (4, 4))
    assert (layout.has_cls, layout.n_registers) == (has_cls, registers)
    roles = layout.token_roles()
    assert len(roles) == layout.n_tokens() == int(has_cls) + registers + 16
    assert [r.role for r in roles[: layout.n_prefix]] == ["cls"] * has_cls + ["register"] * registers
    assert [(r.row, r.col) for r in roles[layout.n_prefix :]] == [(r, c) for r in range(4) for c in range(4)]


@pytest.mark.parametrize("name", FAMILIES)
def test_residual_sites_are_hidden_states_and_each_block_adds_its_attention_and_mlp_outputs(name: str) -> None:
    """resid_pre.k / resid.k are hidden_states[k] / [k + 1], and the hand-written block x_{k+1} = x_k + s1·attn_k +
    s2·mlp_k holds with the values the attention and MLP sites read."""
    model, x = _model(name), _images()
    layout = vision_layout(model)
    hidden = _hidden_states(model, x)
    hooks = _hooks(model)
    for k in range(layout.n_layers):
        sites = [layout.resid_pre(k), layout.attn(k), layout.mlp(k), layout.resid(k)]
        v = capture(model, x, sites, stop_early=False)
        torch.testing.assert_close(v[sites[0]], hidden[k])
        torch.testing.assert_close(v[sites[3]], hidden[k + 1])
        s1, s2 = _layer_scales(model, layout, k)
        with torch.no_grad():
            by_hand = v[sites[0]] + s1(v[sites[1]]) + s2(v[sites[2]])
        torch.testing.assert_close(v[sites[3]], by_hand, atol=1e-5, rtol=1e-5)
    assert _hooks(model) == hooks


@pytest.mark.parametrize("name", FAMILIES)
def test_identity_splice_leaves_outputs_unchanged_and_zero_mlp_splice_matches_by_hand(name: str) -> None:
    model, x = _model(name), _images()
    layout = vision_layout(model)
    hooks = _hooks(model)
    k = 1
    with torch.no_grad():
        clean = primary(model(x))
        with splice(model, {layout.resid(k): lambda v: v.clone(), layout.attn(0): lambda v: v + 0}):
            same = primary(model(x))
    torch.testing.assert_close(same, clean, atol=0, rtol=0)
    # zeroing block k's MLP output leaves the stream after block k at x_k + s1·attn_k, computed here by hand
    pre_attn = capture(model, x, [layout.resid_pre(k), layout.attn(k)])
    s1, _ = _layer_scales(model, layout, k)
    with torch.no_grad():
        by_hand = pre_attn[layout.resid_pre(k)] + s1(pre_attn[layout.attn(k)])
    with splice(model, {layout.mlp(k): torch.zeros_like}):
        after = capture(model, x, [layout.resid(k)], stop_early=False)[layout.resid(k)]
        with torch.no_grad():
            changed = primary(model(x))
    torch.testing.assert_close(after, by_hand, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(changed, clean)
    assert _hooks(model) == hooks


@pytest.mark.parametrize("name", ["vit", "clip", "siglip", "dinov2-registers"])
def test_token_roles_name_the_patch_an_image_region_feeds(name: str) -> None:
    """Change the pixels of patch (r, c) only: before any attention, only the token labelled (r, c) changes."""
    model = _model(name)
    layout = vision_layout(model)
    x = _images(1)
    before = capture(model, x, [layout.resid_pre(0)])[layout.resid_pre(0)][0]
    for role in layout.token_roles()[layout.n_prefix :: 5]:
        y = x.clone()
        y[..., 7 * role.row : 7 * role.row + 7, 7 * role.col : 7 * role.col + 7] += 1.0
        after = capture(model, y, [layout.resid_pre(0)])[layout.resid_pre(0)][0]
        moved = ((after - before).abs().amax(-1) > 1e-6).nonzero().flatten().tolist()
        assert moved == [role.position], role


def test_a_two_tower_model_is_read_at_its_image_tower() -> None:
    from transformers import CLIPConfig, CLIPModel

    text = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, vocab_size=50)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=TINY, projection_dim=8)).eval()
    layout = vision_layout(model)
    assert (layout.layers, layout.n_layers, layout.d_model, layout.has_cls) == ("vision_model.encoder.layers", 3,
                                                                               32, True)
    x, ids = _images(), torch.randint(0, 50, (2, 5))
    got = capture(model, {"pixel_values": x, "input_ids": ids}, [layout.resid(2)], stop_early=False)
    with torch.no_grad():
        hidden = model.vision_model(x, output_hidden_states=True).hidden_states
    torch.testing.assert_close(got[layout.resid(2)], hidden[3])


def test_named_sites_and_bad_names() -> None:
    layout = vision_layout(_model("vit-classifier"))
    assert layout.site("resid.2") == layout.resid(2) and layout.site("mlp.-1") == layout.mlp(2)
    assert str(layout.site("resid_pre.0")) == "vit.layers.0:input"
    with pytest.raises(AnatomistError, match="resid.3"):
        layout.site("residual.3")
    with pytest.raises(AnatomistError, match="out of range"):
        layout.resid(3)
    with pytest.raises(AnatomistError, match="not a vision transformer"):
        vision_layout(nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------------ per-role metrics


def test_token_role_metrics_known_answers() -> None:
    """Neurons basis (identity code): FVU 0 on every role. The position-only baseline has nothing to say about the
    single CLS position (FVU 1 about its own mean) and explains part of the patches (position embeddings)."""
    model, x = _model("dinov2-registers"), _images(12)
    layout = vision_layout(model)
    rows = capture(model, x, [layout.resid(1)])[layout.resid(1)].reshape(-1, 32)
    got = token_role_metrics(fit_basis("neurons", rows), model, x, layout.resid(1), layout, batch_size=5)
    assert set(got) == {"position_mean_fvu", "cls", "register", "patch"}
    assert (got["cls"]["n_rows"], got["register"]["n_rows"], got["patch"]["n_rows"]) == (12, 24, 12 * 16)
    for role in ("cls", "register", "patch"):
        assert got[role]["fvu"] == pytest.approx(0.0, abs=1e-9)
    assert got["cls"]["position_mean_fvu"] == pytest.approx(1.0)
    assert 0 < got["patch"]["position_mean_fvu"] < 1 and 0 < got["position_mean_fvu"] < 1
    half = fit_basis("pca", rows, n=2)  # two directions of 32: a large share unexplained on every role
    assert token_role_metrics(half, model, x, layout.resid(1), layout)["patch"]["fvu"] > 0.2
