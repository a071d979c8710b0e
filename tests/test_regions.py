"""Polytope lens: spline codes, exact crossing counts (against an exact piecewise-linear enumeration), clustering."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM

from anatomist.core.errors import AnatomistError
from anatomist.evaluate.grouping import purity
from anatomist.nets.sites import Site, capture
from anatomist.regions import (
    SplineCodes,
    boundary_density,
    count_crossings,
    find_crossings,
    spline_codes,
    stream_codes,
)
from anatomist.regions.cluster import cluster, distances, score_clusters
from conftest import tiny_llama


def relu_mlp(widths: list[int], seed: int = 0) -> nn.Sequential:
    """1-D input ReLU MLP in float64: Linear, ReLU, ..., Linear(., 1); its ReLUs are modules '1', '3', ..."""
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    d = 1
    for w in widths:
        mods += [nn.Linear(d, w), nn.ReLU()]
        d = w
    mods.append(nn.Linear(d, 1))
    return nn.Sequential(*mods).double()


def relu_sites(model: nn.Sequential) -> list[str]:
    return [name for name, m in model.named_children() if isinstance(m, nn.ReLU)]


def exact_breakpoints(model: nn.Sequential, x0: float, x1: float) -> list[float]:
    """Every sign change of every ReLU input on [x0, x1], by exact enumeration of linear pieces.

    Between consecutive breakpoints of the layers so far the hidden state is affine in x, so the
    next layer's pre-activations are affine there and change sign at most once, where the
    straight line through their values at the two breakpoints crosses zero.
    """
    linears = [m for m in model if isinstance(m, nn.Linear)][:-1]
    weights = [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in linears]

    def hidden(x: float, upto: int) -> np.ndarray:
        h = np.array([x])
        for w, b in weights[:upto]:
            h = np.maximum(w @ h + b, 0.0)
        return h

    points, found = [x0, x1], []
    for layer, (w, b) in enumerate(weights):
        z = [w @ hidden(p, layer) + b for p in points]
        new = []
        for j in range(len(points) - 1):
            for u in np.nonzero(z[j] * z[j + 1] < 0)[0]:
                new.append(points[j] + (points[j + 1] - points[j]) * z[j][u] / (z[j][u] - z[j + 1][u]))
        found += new
        points = sorted(points + new)
    return sorted(found)


# --- exact crossing counts ------------------------------------------------------------------------


@pytest.mark.parametrize(("widths", "seed"), [([8], 0), ([16, 16], 1), ([16, 16, 16], 2), ([32, 24, 16, 8], 3)])
def test_count_crossings_matches_exact_enumeration(widths: list[int], seed: int) -> None:
    model = relu_mlp(widths, seed)
    a, b = torch.tensor([-3.0], dtype=torch.float64), torch.tensor([3.0], dtype=torch.float64)
    want = exact_breakpoints(model, -3.0, 3.0)
    got = find_crossings(model, relu_sites(model), a, b, n_init=4)
    assert count_crossings(model, relu_sites(model), a, b, n_init=4) == len(want) == len(got)
    assert got.unresolved == 0
    # positions too: t in [0, 1] maps to x = -3 + 6t
    np.testing.assert_allclose(np.sort(-3 + 6 * got.t), want, atol=1e-6)


def test_first_layer_breakpoints_are_minus_b_over_w() -> None:
    model = relu_mlp([12], seed=5)
    w, b = model[0].weight.detach().numpy()[:, 0], model[0].bias.detach().numpy()
    roots = -b / w
    inside = np.sort(roots[(roots > -2) & (roots < 2)])
    got = find_crossings(model, ["1"], torch.tensor([-2.0]).double(), torch.tensor([2.0]).double(), n_init=2)
    np.testing.assert_allclose(np.sort(-2 + 4 * got.t), inside, atol=1e-9)
    assert sorted(got.unit.tolist()) == sorted(np.nonzero((roots > -2) & (roots < 2))[0].tolist())


def tent_model() -> nn.Sequential:
    """Layer 1 breaks at 0.50, 0.52, 0.54; a layer-2 unit sees the tent they make and is on only in (0.51, 0.53)."""
    model = nn.Sequential(nn.Linear(1, 3), nn.ReLU(), nn.Linear(3, 1), nn.ReLU(), nn.Linear(1, 1)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.ones(3, 1))
        model[0].bias.copy_(torch.tensor([-0.50, -0.52, -0.54]))
        model[2].weight.copy_(torch.tensor([[1.0, -2.0, 1.0]]))
        model[2].bias.fill_(-0.01)
    return model


def test_refinement_catches_what_sampling_misses() -> None:
    model = tent_model()
    a, b = torch.tensor([0.0]).double(), torch.tensor([1.0]).double()
    # 5 samples at 0, .25, .5 (exactly on a breakpoint, code still off), .75, 1: the layer-2 unit is off at all of them
    naive = boundary_density(model, ["1", "3"], a, b, bins=4, refine=False)
    assert naive.counts.sum() == 3  # the three layer-1 flips, all in one bin; the tent's two flips are missed
    got = find_crossings(model, ["1", "3"], a, b, n_init=4)
    assert len(got) == 5 and got.per_site() == {"1": 3, "3": 2}
    np.testing.assert_allclose(got.t, [0.50, 0.51, 0.52, 0.53, 0.54], atol=1e-9)
    refined = boundary_density(model, ["1", "3"], a, b, bins=4)
    assert refined.counts.sum() == 5
    assert refined.density.sum() * (1.0 / 4) == pytest.approx(5.0)  # density integrates to the count


def test_two_neurons_between_two_samples_are_both_counted() -> None:
    model = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [-1.0]]))
        model[0].bias.copy_(torch.tensor([-0.50, 0.52]))  # one turns on at .50, the other off at .52
    got = find_crossings(model, ["1"], torch.tensor([0.0]).double(), torch.tensor([1.0]).double(), n_init=1)
    assert len(got) == 2
    np.testing.assert_allclose(got.t, [0.50, 0.52], atol=1e-12)


def test_path_at_a_site_equals_path_through_the_rest() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)).double()
    rest = nn.Sequential(model[2], model[3], model[4])
    a, b = torch.randn(16).double(), torch.randn(16).double()
    spliced = count_crossings(model, ["3"], a, b, at=Site("2", "input"), inputs=torch.zeros(1, 4).double())
    direct = count_crossings(rest, ["1"], a, b)
    assert spliced == direct > 0


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    """A tiny random Llama: SwiGLU MLPs whose act_fn (SiLU) reads gate_proj's output."""
    return tiny_llama(2, 32, 48, 101)


def test_language_model_path_through_input_embeddings(llama: LlamaForCausalLM) -> None:
    """A path between two sequences' embeddings: its ends have the sequences' codes, and every unit whose
    code differs between the ends is crossed (an odd number of times, so at least once)."""
    model = llama
    ids = torch.randint(1, 101, (2, 6), generator=torch.Generator().manual_seed(0))
    emb = Site("model.embed_tokens")
    a, b = capture(model, ids, emb)[emb]  # [seq, d_model] each
    sites = ["model.layers.0.mlp.act_fn", "model.layers.1.mlp.act_fn"]
    found = find_crossings(model, sites, a, b, at=emb, inputs={"input_ids": ids[:1]}, n_init=16, tol=1e-6)
    ends = [spline_codes(model, ids[i : i + 1], sites).hard() for i in range(2)]  # [6 tokens, 96 units] each
    # the path's code concatenates sites, each over all tokens; reorder the per-token codes the same way
    flat = [np.concatenate([e[:, :48].reshape(-1), e[:, 48:].reshape(-1)]) for e in ends]
    differ = np.nonzero(flat[0] != flat[1])[0]
    assert len(differ) > 0
    crossed = np.bincount(found.unit, minlength=len(flat[0]))
    assert (crossed[differ] % 2 == 1).all() and (crossed[flat[0] == flat[1]] % 2 == 0).all()


# --- spline codes ------------------------------------------------------------------------------------


def test_binary_codes_are_packed_signs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 13), nn.ReLU(), nn.Linear(13, 5), nn.LeakyReLU())
    x = torch.randn(40, 6)
    codes = spline_codes(model, x, ["1", "3"])
    z1 = model[0](x)
    z2 = model[2](torch.relu(z1))
    want = torch.cat([z1, z2], dim=1).detach() > 0
    assert codes.bits.dtype == np.uint8 and codes.bits.shape == (40, 3)  # 18 units -> 3 bytes
    assert codes.widths == (13, 5) and codes.soft is None
    np.testing.assert_array_equal(codes.hard(), want.numpy())
    np.testing.assert_array_equal(codes.hard()[:, codes.site_units("3")], (z2 > 0).numpy())


def test_soft_codes_of_swiglu_gate_are_sigmoid_of_gate_proj(llama: LlamaForCausalLM) -> None:
    model = llama
    ids = torch.randint(1, 101, (3, 7), generator=torch.Generator().manual_seed(0))
    codes = spline_codes(model, ids, ["model.layers.1.mlp.act_fn"], soft=True)
    gate = capture(model, ids, "model.layers.1.mlp.gate_proj")[Site("model.layers.1.mlp.gate_proj")]
    assert len(codes) == 21 and codes.n_units == 48  # one code per token
    np.testing.assert_allclose(codes.values(), torch.sigmoid(gate).reshape(21, 48).numpy(), atol=1 / 510 + 1e-6)
    np.testing.assert_array_equal(codes.hard(), (gate > 0).reshape(21, 48).numpy())
    # padding tokens get no code
    masked = spline_codes(
        model, {"input_ids": ids, "attention_mask": torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 7])},
        ["model.layers.1.mlp.act_fn"],
    )  # fmt: skip
    assert len(masked) == 19


@pytest.mark.parametrize(
    ("act", "gate"),
    [
        (nn.SiLU(), torch.sigmoid),
        (nn.GELU(), lambda z: 0.5 * (1 + torch.erf(z / 2**0.5))),
        (nn.GELU(approximate="tanh"), lambda z: nn.GELU(approximate="tanh")(z) / z),
        (nn.Mish(), lambda z: nn.Mish()(z) / z),
    ],
)
def test_soft_code_is_the_gate_f_over_z(act: nn.Module, gate: object) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 30), act)
    x = torch.randn(50, 5)
    z = model[0](x).detach()
    codes = spline_codes(model, x, ["1"], soft=True)
    np.testing.assert_allclose(codes.values(), gate(z).numpy(), atol=1 / 510 + 1e-5)  # type: ignore[operator]


def test_site_without_nonlinearity_is_a_clear_error() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.Tanh())
    with pytest.raises(AnatomistError, match=r"site '2' is a Linear.*nearby: 1"):
        spline_codes(model, torch.randn(2, 3), ["2"])
    with pytest.raises(AnatomistError, match="site '3' is a Tanh"):
        count_crossings(model, ["3"], torch.zeros(3), torch.ones(3))
    with pytest.raises(AnatomistError, match="no module 'relu'"):
        spline_codes(model, torch.randn(2, 3), ["relu"])
    with pytest.raises(AnatomistError, match="differ in shape"):
        count_crossings(model, ["1"], torch.zeros(3), torch.ones(4))


def test_streaming_keeps_only_packed_codes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU())
    gen = torch.Generator().manual_seed(1)
    alive: list[weakref.ref[torch.Tensor]] = []

    def batches() -> Iterator[torch.Tensor]:
        for _ in range(100):
            x = torch.randn(32, 8, generator=gen)
            alive.append(weakref.ref(x))
            # batches already coded are gone: the stream holds no inputs (nor their activations)
            assert sum(r() is not None for r in alive[:-2]) == 0
            yield x

    codes = stream_codes(model, batches(), ["1", "3"])
    assert len(codes) == 3_200 and codes.n_units == 400
    assert codes.nbytes == 3_200 * 50  # 400 units -> 50 bytes per example, 32x less than float32 activations
    gen.manual_seed(1)
    again = spline_codes(model, torch.randn(32, 8, generator=gen), ["1", "3"])
    np.testing.assert_array_equal(codes.bits[:32], again.bits)
    codes.save(tmp_path / "codes.safetensors")
    loaded = SplineCodes.load(tmp_path / "codes.safetensors")
    np.testing.assert_array_equal(loaded.bits, codes.bits)
    assert loaded.sites == ("1", "3") and loaded.widths == (300, 100)


# --- clustering ------------------------------------------------------------------------------------------


def test_hamming_distance_counts_differing_units() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 2, (7, 50)), rng.integers(0, 2, (5, 50))
    got = distances(torch.tensor(x).float(), torch.tensor(y).float(), "hamming")
    np.testing.assert_array_equal(got.numpy(), (x[:, None, :] != y[None, :, :]).sum(-1))


def test_purity_known_answer() -> None:
    assert purity(np.array([0, 0, 0, 1, 1, 1]), np.array([5, 5, 7, 7, 7, 7])) == pytest.approx(5 / 6)
    scores = score_clusters(np.array([0, 0, 1, 1, 2]), np.array([3, 3, 4, 4, -1]))
    assert scores["purity"] == 1.0 and scores["nmi"] == pytest.approx(1.0) and scores["n_scored"] == 4


def test_code_clusters_recover_planted_regions() -> None:
    """Codes made by flipping 5% of the bits of 6 prototypes: Hamming k-medoids finds the prototypes."""
    rng = np.random.default_rng(0)
    protos = rng.integers(0, 2, (6, 400)).astype(bool)
    labels = rng.integers(0, 6, 900)
    hard = protos[labels] ^ (rng.random((900, 400)) < 0.05)
    codes = SplineCodes(np.packbits(hard, axis=1), None, ("x",), (400,))
    got = cluster(codes, 6, "hamming", fit_on=300, seed=0)
    scores = score_clusters(got.assignment, labels)
    assert scores["purity"] == 1.0 and scores["nmi"] == pytest.approx(1.0)
    assert scores["chance_purity"] < 0.3


def test_cosine_sees_direction_where_euclidean_sees_norm() -> None:
    """Three directions with norms spread over 0.5..20: cosine clusters find the directions, Euclidean does not."""
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(3, 20))
    labels = rng.integers(0, 3, 600)
    x = dirs[labels] * rng.uniform(0.5, 20, (600, 1)) + 0.05 * rng.normal(size=(600, 20))
    cos = score_clusters(cluster(x.astype(np.float32), 3, "cosine").assignment, labels)
    euc = score_clusters(cluster(x.astype(np.float32), 3, "euclidean").assignment, labels)
    assert cos["purity"] == 1.0
    assert euc["purity"] < 0.9


# --- the command line on the packaged MNIST CNN -------------------------------------------------------


def test_cli_density_and_cluster_on_mnist_cnn(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from anatomist.cli.regions import regions_app
    from anatomist.nets.assets import load_model
    from anatomist.runs.regions import default_sites
    from run_folder import check_run_folder

    runner = CliRunner()
    assert default_sites(load_model("mnist-cnn")) == ("features.relu1", "features.relu2", "classifier.relu3")
    args = ["density", "mnist-cnn", "--sites", "classifier.relu3", "--pairs", "2", "--bins", "20", "--exact-pairs", "1"]
    got = runner.invoke(regions_app, [*args, "--out", str(tmp_path / "d"), "--json"])
    assert got.exit_code == 0, got.output
    result = json.loads(got.stdout)["numbers"]
    assert result["sites"] == ["classifier.relu3"] and result["pairs_with_class_change"] == 2
    assert result["crossings_exact"] >= result["crossings_sampled"] > 0  # sampling can only miss crossings
    assert (tmp_path / "d" / "density_examples.png").is_file() and (tmp_path / "d" / "paths.json").is_file()
    metrics = check_run_folder(tmp_path / "d", "regions-density")
    assert metrics.numbers["crossings_exact"] == result["crossings_exact"]
    assert set(metrics.tables["per_site"]) == {"classifier.relu3", "all sites"}
    got = runner.invoke(
        regions_app,
        ["cluster", "mnist-cnn", "--sites", "classifier.relu3", "--n", "60", "--k", "3", "--out", str(tmp_path / "c")],
    )
    assert got.exit_code == 0, got.output
    assert "classifier.relu3" in got.stdout and (tmp_path / "c" / "clusters.png").is_file()
    rows = check_run_folder(tmp_path / "c", "regions-cluster").tables["rows"]
    assert {r["representation"] for r in rows.values()} == {"code", "activation", "direction"}
    bad = runner.invoke(regions_app, ["cluster", "mnist-cnn", "--sites", "classifier.fc1", "--out", str(tmp_path)])
    assert isinstance(bad.exception, AnatomistError) and "is a Linear" in str(bad.exception)


def test_regions_yaml_configs_parse_as_their_kinds() -> None:
    from anatomist.runs import load_run_config

    root = Path(__file__).parents[1] / "experiments"
    assert load_run_config(str(root / "regions_smollm2_density.yaml")).kind == "regions-density"
    cluster_cfg = load_run_config(str(root / "regions_smollm2_cluster.yaml"), ["k=5"])
    assert cluster_cfg.kind == "regions-cluster" and cluster_cfg.k == 5  # type: ignore[attr-defined]
