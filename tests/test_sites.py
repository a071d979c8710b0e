"""Sites on any PyTorch model: values match a hand-written forward, splicing is exact, hooks never leak."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, LlamaForCausalLM

from anatomist import AnatomistError, Site, capture, list_sites, splice
from conftest import tiny_llama


def _hook_counts(model: nn.Module) -> list[int]:
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]


@pytest.fixture(scope="module")
def gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=101, n_positions=64, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    return tiny_llama(3, 32, 64, 101)


@pytest.fixture(scope="module")
def bert() -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4, vocab_size=101)
    return BertModel(cfg).eval()


IDS = torch.randint(1, 101, (2, 9), generator=torch.Generator().manual_seed(1))


def test_site_parse_and_str() -> None:
    assert Site.parse("a.b:input") == Site("a.b", "input")
    assert Site.parse("a.b") == Site("a.b", "output")
    assert str(Site("a.b")) == "a.b:output"
    with pytest.raises(AnatomistError, match="where must be"):
        Site("a", "middle")  # type: ignore[arg-type]


def test_sequential_matches_hand_forward() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    x = torch.randn(4, 5)
    got = capture(model, x, ["1", "2:input", "2"])
    hidden = F.relu(x @ model[0].weight.T + model[0].bias)
    torch.testing.assert_close(got[Site("1")], hidden)
    torch.testing.assert_close(got[Site("2", "input")], hidden)
    torch.testing.assert_close(got[Site("2")], hidden @ model[2].weight.T + model[2].bias)


def test_gpt2_sites_match_hand_forward(gpt2: GPT2LMHeadModel) -> None:
    tr = gpt2.transformer
    got = capture(gpt2, IDS, ["transformer.h.0:input", "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp:input"])
    emb = tr.wte.weight[IDS] + tr.wpe.weight[torch.arange(IDS.shape[1])]
    torch.testing.assert_close(got[Site("transformer.h.0", "input")], emb)
    mlp_in = got[Site("transformer.h.0.mlp", "input")]
    fc = tr.h[0].mlp.c_fc  # HF Conv1D stores its weight as [d_in, d_out]
    torch.testing.assert_close(got[Site("transformer.h.0.mlp.c_fc")], mlp_in @ fc.weight + fc.bias)
    hidden = gpt2(IDS, output_hidden_states=True).hidden_states
    for i in range(2):
        torch.testing.assert_close(capture(gpt2, IDS, f"transformer.h.{i}")[Site(f"transformer.h.{i}")], hidden[i + 1])


def test_llama_sites_match_hand_forward(llama: LlamaForCausalLM) -> None:
    got = capture(llama, {"input_ids": IDS}, ["model.layers.1.mlp:input", "model.layers.1.mlp", "model.layers.0"])
    x = got[Site("model.layers.1.mlp", "input")]
    mlp = llama.model.layers[1].mlp
    hand = mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
    torch.testing.assert_close(got[Site("model.layers.1.mlp")], hand)
    hidden = llama(IDS, output_hidden_states=True).hidden_states
    torch.testing.assert_close(got[Site("model.layers.0")], hidden[1])


def test_bert_sites_match_hidden_states(bert: BertModel) -> None:
    hidden = bert(IDS, output_hidden_states=True).hidden_states
    got = capture(bert, IDS, ["encoder.layer.0", "encoder.layer.1"])
    torch.testing.assert_close(got[Site("encoder.layer.0")], hidden[1])
    torch.testing.assert_close(got[Site("encoder.layer.1")], hidden[2])


def test_capture_stops_after_last_site(llama: LlamaForCausalLM) -> None:
    ran: list[str] = []
    handles = [
        llama.model.layers[i].register_forward_hook(lambda *_a, i=i: ran.append(f"layer{i}")) for i in range(3)
    ]
    handles.append(llama.lm_head.register_forward_hook(lambda *_a: ran.append("lm_head")))
    try:
        capture(llama, IDS, "model.layers.0")
        assert ran == ["layer0"]
        ran.clear()
        capture(llama, IDS, "model.layers.0", stop_early=False)
        assert ran == ["layer0", "layer1", "layer2", "lm_head"]
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
def test_identity_splice_changes_nothing(name: str, request: pytest.FixtureRequest) -> None:
    model = request.getfixturevalue(name)
    site = {"gpt2": "transformer.h.1", "llama": "model.layers.1", "bert": "encoder.layer.0"}[name]
    before = _hook_counts(model)
    with torch.no_grad():
        ref = model(IDS)[0]
        with splice(model, {site: lambda v: v}):
            same = model(IDS)[0]
        with splice(model, {site: torch.zeros_like}):
            ablated = model(IDS)[0]
    assert torch.equal(ref, same)
    assert not torch.allclose(ref, ablated)
    assert _hook_counts(model) == before


def test_splice_input_site_and_downstream_effect(llama: LlamaForCausalLM) -> None:
    site = Site("model.layers.2.mlp", "input")
    with splice(llama, {site: lambda v: 2 * v}):
        doubled = capture(llama, IDS, [site])[site]
    plain = capture(llama, IDS, [site])[site]
    torch.testing.assert_close(doubled, 2 * plain)


def test_hooks_removed_when_forward_raises(llama: LlamaForCausalLM) -> None:
    before = _hook_counts(llama)

    def boom(v: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), splice(llama, {"model.layers.0": boom}):
        llama(IDS)
    assert _hook_counts(llama) == before
    with pytest.raises(AnatomistError):
        capture(llama, torch.randn(2, 9), "model.layers.1")  # float ids: forward raises inside capture
    assert _hook_counts(llama) == before


def test_unknown_site_lists_nearest_names(llama: LlamaForCausalLM) -> None:
    with pytest.raises(AnatomistError, match=r"no module 'model\.layer\.1'.*nearest valid names: model\.layers\.1"):
        capture(llama, IDS, "model.layer.1")


def test_wrong_shaped_input_is_one_clear_line() -> None:
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU())
    with pytest.raises(AnatomistError) as err:
        capture(model, torch.randn(3, 4), "1")
    msg = str(err.value)
    assert "\n" not in msg and "[3, 4]" in msg and "Sequential" in msg


def test_splice_wrong_shape_names_site() -> None:
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU())
    with pytest.raises(AnatomistError, match=r"splice at '0:output': expected shape \[3, 7\]"), splice(
        model, {"0": lambda v: v[:, :2]}
    ):
        model(torch.randn(3, 5))


def test_reused_module_is_reported() -> None:
    act = nn.ReLU()
    model = nn.Sequential(nn.Linear(4, 4), act, nn.Linear(4, 4), act)
    with pytest.raises(AnatomistError, match="more than once"):
        capture(model, torch.randn(2, 4), "1", stop_early=False)


def test_list_sites_shapes(gpt2: GPT2LMHeadModel) -> None:
    infos = {s.module: s for s in list_sites(gpt2, IDS)}
    assert infos["transformer.h.0"].output_shape == (2, 9, 32)
    assert infos["transformer.h.0.mlp.c_fc"].output_shape == (2, 9, 128)
    assert infos["lm_head"].output_shape == (2, 9, 101)
    assert len(list_sites(gpt2)) == len([n for n, _ in gpt2.named_modules() if n])


def test_capture_with_grad_keeps_graph() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    x = torch.randn(2, 3)
    out = capture(model, x, "0", grad=True)[Site("0")]
    out.sum().backward()
    assert model[0].weight.grad is not None


def test_record_keeps_values_in_the_graph_and_lets_them_pass() -> None:
    from anatomist.nets.sites import record

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    with record(model, ["0"]) as seen:
        y = model(x)
    assert torch.equal(y, model(x))
    assert seen[Site("0")].requires_grad and torch.allclose(seen[Site("0")], model[0](x))
    assert not model[0]._forward_hooks


def test_run_and_capture_returns_output_and_sites_in_one_forward() -> None:
    from anatomist.nets.sites import run_and_capture

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    out, seen = run_and_capture(model, x, ["2:input"])
    assert torch.equal(out, model(x)) and torch.equal(seen[Site("2", "input")], torch.relu(model[0](x)))
    with pytest.raises(AnatomistError, match="never ran"):
        run_and_capture(_Unused(), x, ["skipped"])


class _Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.skipped = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_replace_forward_swaps_and_restores_even_on_error() -> None:
    from anatomist.nets.sites import replace_forward

    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    x = torch.randn(2, 3)
    with replace_forward(model, {"0": lambda v: v * 2}):
        assert torch.equal(model(x), torch.relu(x * 2))
    assert torch.equal(model(x), torch.relu(model[0](x))) and "forward" not in model[0].__dict__
    with pytest.raises(RuntimeError), replace_forward(model, {"0": lambda v: v}):
        raise RuntimeError
    assert "forward" not in model[0].__dict__
