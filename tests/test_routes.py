"""Routes lens: the control/content split on HF MoE classes and our toy, paths, stability, probes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from anatomist import AnatomistError, Site, capture, splice
from anatomist.core.lock import LOCK
from anatomist.nets.toys.moe_lm import MoEBlock, MoELM, MoELMConfig
from anatomist.routes import control_content, find_moe_layers, moe_layer, router_basis
from anatomist.routes.analysis import AnalyzeConfig, analyze, summary
from anatomist.routes.control import split_coordinates
from anatomist.routes.paths import Routing, collect_routing, group_scores, path_groups, path_stats, stability, top_paths
from anatomist.routes.probes import probe_accuracy, probe_layer


def _hf(kind: str) -> nn.Module:
    import transformers as tf

    common = dict(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, eos_token_id=None, bos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    if kind == "olmoe":
        cfg = tf.OlmoeConfig(num_experts=8, num_experts_per_tok=2, **common)
        cls = tf.OlmoeForCausalLM
    elif kind == "mixtral":
        cfg = tf.MixtralConfig(num_local_experts=8, num_experts_per_tok=2, **common)
        cls = tf.MixtralForCausalLM
    else:
        cfg = tf.Qwen2MoeConfig(
            num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16, **common
        )
        cls = tf.Qwen2MoeForCausalLM
    torch.manual_seed(0)
    return cls(cfg).eval()


def _toy() -> nn.Module:
    torch.manual_seed(0)
    cfg = MoELMConfig(vocab_size=64, d_model=32, n_layers=3, n_heads=4, n_experts=8, d_expert=16, seq_len=16)
    model = MoELM(cfg).eval()
    for layer in find_moe_layers(model):  # a router that is not all-near-zero, as after training
        nn.init.normal_(layer.weight, std=0.5)
    return model


MODELS = ["olmoe", "mixtral", "qwen2moe", "toy"]


def _model(kind: str) -> nn.Module:
    return _toy() if kind == "toy" else _hf(kind)


@pytest.mark.parametrize("kind", MODELS)
def test_find_moe_layers(kind: str) -> None:
    model = _model(kind)
    layers = find_moe_layers(model)
    assert len(layers) == 3
    assert all(lay.n_experts == 8 and lay.d_model == 32 for lay in layers)
    assert layers[1].router_name.endswith("layers.1.mlp.gate")
    assert moe_layer(model, layers[2].name) is not None and moe_layer(model, -1).name == layers[2].name


@pytest.mark.parametrize("kind", MODELS)
def test_router_invariance(kind: str) -> None:
    """The defining property: swapping in another token's content leaves every router logit unchanged."""
    model = _model(kind)
    layer = find_moe_layers(model)[1]
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    out = capture(model, ids, [Site(layer.router_name, "input"), Site(layer.router_name, "output")])
    hidden, logits = out[Site(layer.router_name, "input")], out[Site(layer.router_name, "output")]
    control, content = control_content(layer, hidden)
    torch.testing.assert_close(control + content, hidden, rtol=0, atol=1e-6)
    assert (control * content).sum(-1).abs().max() < 1e-4 * hidden.norm(dim=-1).max() ** 2
    flat = hidden.reshape(-1, 32)
    other = flat.roll(1, dims=0).view_as(hidden)  # every token gets another token's state
    other_control, other_content = control_content(layer, other)

    def router_logits_with(value: torch.Tensor) -> torch.Tensor:
        with splice(model, {Site(layer.router_name, "input"): lambda _h: value}):
            return capture(model, ids, Site(layer.router_name, "output"))[Site(layer.router_name, "output")]

    scale = float(logits.abs().max())
    same = router_logits_with(control + other_content)
    assert (same - logits).abs().max() <= 1e-5 * scale  # float precision
    changed = router_logits_with(other_control + content)
    assert (changed - logits).abs().max() > 0.1 * scale
    torch.testing.assert_close(changed, router_logits_with(other), rtol=1e-5, atol=1e-5 * scale)


def test_control_content_accepts_block_and_checks_width() -> None:
    model = _hf("olmoe")
    layer = find_moe_layers(model)[0]
    h = torch.randn(5, 32)
    for a, b in zip(control_content(layer.block, h), control_content(layer, h), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(AnatomistError, match=r"shape \[5, 31\].*width 32"):
        control_content(layer, torch.randn(5, 31))
    with pytest.raises(AnatomistError, match="not an MoE block"):
        control_content(nn.Linear(32, 8), h)


def test_no_moe_layer_is_a_clear_error() -> None:
    import transformers as tf

    cfg = tf.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4
    )
    with pytest.raises(AnatomistError, match="LlamaForCausalLM has no MoE layer"):
        find_moe_layers(tf.LlamaForCausalLM(cfg))
    with pytest.raises(AnatomistError, match="out of range"):
        moe_layer(_toy(), 7)


def test_rank_and_coordinates() -> None:
    block = MoEBlock(d_model=16, n_experts=4, top_k=1, d_expert=8)
    with torch.no_grad():  # a rank-2 router: two pairs of identical rows
        block.gate.weight.copy_(torch.randn(2, 16).repeat(2, 1))
    layer = find_moe_layers(block)[0]
    assert router_basis(layer).shape == (2, 16)
    h = torch.randn(10, 16, dtype=torch.float64)
    ctrl_xy, cont_xy = split_coordinates(layer, h)
    control, content = control_content(layer, h)
    assert ctrl_xy.shape == (10, 2) and cont_xy.shape == (10, 14)
    torch.testing.assert_close(ctrl_xy.norm(dim=-1), control.norm(dim=-1))
    torch.testing.assert_close(cont_xy.norm(dim=-1), content.norm(dim=-1))


def test_paths_known_answer() -> None:
    top1 = torch.tensor([[0, 1], [0, 1], [0, 1], [2, 3], [2, 3], [1, 1]])
    inverse, paths, counts = path_groups(top1)
    assert paths.tolist() == [[0, 1], [1, 1], [2, 3]] and counts.tolist() == [3, 1, 2]
    assert inverse.tolist() == [0, 0, 0, 2, 2, 1]
    stats = path_stats(top1, n_experts=4)
    assert stats["n_paths"] == 3 and stats["possible_paths"] == 16
    p = np.array([3, 1, 2]) / 6
    assert stats["path_entropy_bits"] == pytest.approx(float(-(p * np.log2(p)).sum()))
    assert stats["singleton_share"] == pytest.approx(1 / 6)
    top = top_paths(top1, ["a", "a", "b", "c", "c", "d"], n=2, examples=1)
    assert top[0]["path"] == [0, 1] and top[0]["tokens"] == [["a", 2]] and top[1]["count"] == 2


def test_group_scores_known_answer() -> None:
    labels = np.repeat(np.arange(4), 250)
    exact = group_scores(labels * 3 + 1, labels)
    assert exact["purity"] == 1.0 and exact["mi_bits"] == pytest.approx(2.0)
    assert exact["purity_chance"] < 0.35 and exact["mi_chance_bits"] < 0.05
    noise = group_scores(np.random.default_rng(0).integers(0, 4, 1000), labels)
    assert abs(noise["mi_lift_bits"]) < 0.05 and abs(noise["purity_lift"]) < 0.05
    masked = group_scores(np.zeros(4), np.array([0, 1, -1, -1]))
    assert masked["n_tokens"] == 2
    with pytest.raises(AnatomistError, match="differ"):
        group_scores(np.zeros(3), np.zeros(4))


def _planted_routing(n: int = 3000) -> tuple[Routing, np.ndarray]:
    """Two MoE layers sharing hidden states; a label planted in the content part only."""
    gen = torch.Generator().manual_seed(0)
    blocks = [MoEBlock(d_model=16, n_experts=4, top_k=1, d_expert=4) for _ in range(2)]
    layers = [find_moe_layers(b)[0] for b in blocks]
    hidden = torch.randn(n, 16, generator=gen)
    _, content = split_coordinates(layers[0], hidden)
    label = content[:, :3].argmax(1).numpy()  # a 3-class label that only content carries
    logits = torch.stack([lay.router_logits(hidden) for lay in layers]).detach()
    return Routing(layers, torch.stack([hidden, hidden]), logits), label


def test_probes_find_the_planted_split() -> None:
    routing, label = _planted_routing()
    res = probe_layer(routing, 0, {"planted": label}, max_tokens=3000)
    assert res["planted"]["content"]["accuracy"] > 0.9
    assert res["planted"]["control"]["accuracy"] < res["planted"]["control"]["chance"] + 0.1
    assert res["expert"]["control"]["accuracy"] > 0.9  # routing is a linear function of control
    assert res["expert"]["content"]["accuracy"] < res["expert"]["content"]["chance"] + 0.1
    assert set(res) == {"planted", "expert", "next_expert"}
    with pytest.raises(AnatomistError, match="do not match"):
        probe_accuracy(torch.zeros(5, 2), np.zeros(4, dtype=np.int64))


def test_stability_identical_and_orthogonal_layers() -> None:
    routing, _ = _planted_routing(500)
    same = Routing([routing.layers[0]] * 2, routing.hidden, routing.logits)
    s = stability(same)[0]
    assert s["control_cos"] == pytest.approx(1.0) and s["content_cos"] == pytest.approx(1.0)
    assert s["subspace_overlap"] == pytest.approx(1.0) and abs(s["control_cos_shuffled"]) < 0.1
    with torch.no_grad():  # second router reads only the first router's complement
        basis = router_basis(routing.layers[0])
        other = torch.randn(4, 16)
        other = other - (other.double() @ basis.T @ basis).float()
        routing.layers[1].weight.copy_(other)
    s = stability(routing)[0]
    assert s["subspace_overlap"] < 1e-6 and abs(s["control_cos"]) < 1e-6


def test_collect_routing_matches_router() -> None:
    model = _toy()
    ids = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(0))
    routing = collect_routing(model, ids, band=[0, 2], batch_size=2)
    assert routing.hidden.shape == (2, 48, 32) and routing.top1.shape == (48, 2)
    routers = model(ids).router_logits
    torch.testing.assert_close(routing.logits[1], routers[2])
    torch.testing.assert_close(routing.layers[0].router_logits(routing.hidden[0]), routing.logits[0])
    with pytest.raises(AnatomistError, match="out of range"):
        collect_routing(model, ids, band=[5])


class _Tokenizer:
    """Decodes id i to one of a few token kinds, enough for every token label."""

    all_special_ids = [0]

    def decode(self, ids: list[int]) -> str:
        i = ids[0]
        return ["<s>", ",", ".", "The", "7", " the", " of", " a"][i % 8] + ("" if i < 8 else "x" * (i // 8))


def test_analyze_and_the_routes_run_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anatomist.runs import routes as routes_kind
    from anatomist.runs import run
    from run_folder import check_run_folder

    model = _toy()
    ids = torch.randint(1, 64, (24, 16), generator=torch.Generator().manual_seed(0))
    cfg = AnalyzeConfig(probe_tokens=300, max_clusters=16, n_position_buckets=5)
    res = analyze(model, ids, _Tokenizer(), cfg)
    subject = routes_kind.Subject("toy", model, _Tokenizer(), ids, ids, {})
    monkeypatch.setattr(routes_kind, "load_subject", lambda *args: subject)
    run_cfg = routes_kind.RoutesConfig(model="toy", probe_tokens=300, max_clusters=16, n_position_buckets=5)
    result = run(run_cfg, tmp_path)
    assert {p.name for p in tmp_path.iterdir() if p.name != LOCK} == {
        "config.yaml",
        "metrics.json",
        "provenance.json",
        "stability.png",
        "probes.png",
        "monosemanticity.png",
    }
    metrics = check_run_folder(tmp_path, "routes", run_cfg)
    assert result.value["paths"] == res["paths"]  # the run kind is `analyze` on the subject, written down
    assert metrics.numbers["paths.n_paths"] == res["paths"]["n_paths"]
    assert metrics.numbers["headline.n_paths"] == res["paths"]["n_paths"]
    assert res["paths"]["n_tokens"] == ids.numel() and res["router_rank"] == [8, 8, 8]
    assert len(res["stability"]) == 2 and set(res["probes"]) == {lay.name for lay in find_moe_layers(model)}
    mono = res["monosemanticity"]
    assert (
        mono["kmeans_control"]["token"]["n_groups"] <= 16
        and mono["path"]["position"]["n_groups"] == res["paths"]["n_paths"]
    )
    # a path refines each single-layer expert grouping, so it can only explain more of any label
    for lab in mono["path"]:
        coarser = [g for g in mono if g.startswith("expert@") or g.startswith("path_len")]
        assert all(mono["path"][lab]["mi_bits"] >= mono[g][lab]["mi_bits"] - 1e-9 for g in coarser)
    numbers = summary(res)
    assert numbers["n_paths"] == res["paths"]["n_paths"] and 0 <= numbers["probe_expert_control"] <= 1
    with pytest.raises(AnatomistError, match="shape of ids"):
        analyze(model, ids, _Tokenizer(), cfg, label_ids=ids[:2])


def test_cli_layers_on_a_saved_hf_model(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from anatomist.cli.routes import routes_app

    _hf("olmoe").save_pretrained(tmp_path / "olmoe")
    result = CliRunner().invoke(routes_app, ["layers", str(tmp_path / "olmoe"), "--json"])
    assert result.exit_code == 0, result.output
    layers = json.loads(result.output)["layers"]
    assert [lay["router"] for lay in layers] == [f"model.layers.{i}.mlp.gate" for i in range(3)]
    assert all(lay["n_experts"] == 8 and lay["router_rank"] == 8 for lay in layers)
    bad = CliRunner().invoke(routes_app, ["analyze", "moe-lm", "--band", "0,x"])
    assert isinstance(bad.exception, AnatomistError) and "--band" in str(bad.exception)
