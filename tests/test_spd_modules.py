"""SPD options from the reference's later versions: C per module pattern, shared and global CI networks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from anatomist.core.errors import AnatomistError
from anatomist.evaluate.recovery import match
from anatomist.mechanisms import spd
from conftest import pentagon_tms
from test_spd import FAST, EmbedThenLinear, Planted, sparse_batches

pytestmark = pytest.mark.usefixtures("one_thread")


def _fit(net: Planted, cfg: spd.SPDConfig) -> spd.SPDDecomposition:
    data = sparse_batches(3, cfg.batch_size, 0.25, torch.Generator().manual_seed(0))
    return spd.decompose(net, data, ["read", "write"], cfg)


def test_C_per_module_gives_each_target_its_own_C_and_recovers_with_exactly_enough() -> None:
    net = Planted()
    dec = _fit(net, FAST.replace(C=6, C_per_module={"re*": 3}))
    assert dec.C_of == {"read": 3, "write": 6}
    assert dec.matrices("read").shape == (3, 6, 3) and dec.matrices("write").shape == (6, 3, 6)
    ci = dec.importances(torch.eye(3) * 0.75)
    assert ci["read"].shape == (3, 3) and ci["write"].shape == (3, 6)
    # read has three mechanisms and now exactly three subcomponents: each must be one of them
    m = match(net.truth["read"], dec.matrices("read").detach())
    assert m.mmcs > 0.98 and m.worst > 0.97, m.summary()
    assert ((ci["read"] > 0.5).sum(1) == 1).all() and ci["read"].argmax(1).unique().numel() == 3, ci["read"]
    with pytest.raises(AnatomistError, match=r"expected \[\.\.\., 3\]"):
        dec.run_with_masks(torch.rand(2, 3), {"read": torch.ones(2, 6)})


def test_C_per_module_bad_patterns() -> None:
    with pytest.raises(AnatomistError, match="'mlp.*' matches no target"):
        spd.initial_decomposition(Planted(), ["read", "write"], FAST.replace(C_per_module={"mlp.*": 4}))
    with pytest.raises(AnatomistError, match="must be positive"):
        spd.initial_decomposition(Planted(), ["read"], FAST.replace(C_per_module={"read": 0}))
    model, _ = pentagon_tms()  # linear2 is linear1's transpose: one set of factors, one C
    with pytest.raises(AnatomistError, match="share one weight"):
        spd.initial_decomposition(model, ["linear1", "linear2"], FAST.replace(C_per_module={"linear2": 4}))
    tied = spd.initial_decomposition(model, ["linear1", "linear2"], FAST.replace(C_per_module={"linear*": 4}))
    assert tied.matrices("linear2").shape == (4, 5, 2)


def test_shared_and_global_ci_networks_read_whole_layer_inputs() -> None:
    net = Planted()
    x = torch.rand(5, 3)
    _, acts = spd.initial_decomposition(net, ["read", "write"], FAST).run_capturing_inputs(x)
    # without a hidden layer a shared CI network is one affine map of the layer input to its C gates
    linear = spd.initial_decomposition(net, ["read", "write"], FAST.replace(ci_fn="shared_mlp", d_gate=0))
    pre = linear.gate_preactivations(acts)
    for i, name in enumerate(["read", "write"]):
        W, b = linear.ci[i].weights[0], linear.ci[i].biases[0]
        assert W.shape == (acts[name].shape[1], 6)
        assert torch.allclose(pre[name], acts[name] @ W + b)
    # a per-target network sees only its own layer's input; the global one sees every target's
    nudged = {**acts, "write": acts["write"] + 1.0}
    for ci_fn, read_moves in [("shared_mlp", False), ("global_shared_mlp", True)]:
        dec = spd.initial_decomposition(net, ["read", "write"], FAST.replace(ci_fn=ci_fn, d_gate=8))
        before, after = dec.gate_preactivations(acts), dec.gate_preactivations(nudged)
        assert before["read"].shape == (5, 6) and before["write"].shape == (5, 6)
        assert (not torch.allclose(before["read"], after["read"])) == read_moves, ci_fn
        assert not torch.allclose(before["write"], after["write"])


def test_shared_ci_networks_refuse_embeddings() -> None:
    with pytest.raises(AnatomistError, match="embedding targets \\['embed'\\] need ci_fn 'mlp'"):
        spd.initial_decomposition(EmbedThenLinear(), ["embed", "proj"], FAST.replace(ci_fn="shared_mlp"))
    assert isinstance(spd.initial_decomposition(nn.Sequential(nn.Linear(2, 2)), ["0"], FAST).ci, spd.CausalImportance)


def test_per_module_C_and_shared_networks_survive_save_and_load(tmp_path: Path) -> None:
    cfg = FAST.replace(C_per_module={"read": 2}, ci_fn="global_shared_mlp", d_gate=4)
    dec = spd.initial_decomposition(Planted(), ["read", "write"], cfg)
    dec.save(tmp_path)
    loaded = spd.SPDDecomposition.load(Planted(), tmp_path)
    assert loaded.C_of == {"read": 2, "write": 6} and loaded.config.ci_fn == "global_shared_mlp"
    x = torch.rand(4, 3)
    before, after = dec.importances(x), loaded.importances(x)
    assert all(torch.equal(before[n], after[n]) for n in ("read", "write"))
