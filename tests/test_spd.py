"""SPD: its pieces (sigmoids, masks, gates, losses), recovery of planted mechanisms, resume, bad input."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from anatomist.core.errors import AnatomistError
from anatomist.evaluate.recovery import match
from anatomist.mechanisms import spd
from conftest import pentagon_tms

pytestmark = pytest.mark.usefixtures("one_thread")


def test_hard_sigmoids() -> None:
    x = torch.tensor([-2.0, 0.0, 0.5, 1.0, 3.0])
    assert torch.allclose(spd.lower_leaky(x), torch.tensor([-0.02, 0.0, 0.5, 1.0, 1.0]))
    assert torch.allclose(spd.upper_leaky(x), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.02]))


def test_learning_rate_schedules() -> None:
    from anatomist.mechanisms.apd import APDConfig

    spd_cfg = spd.SPDConfig(steps=101, lr=1.0, lr_schedule="cosine", lr_warmup=0.0)
    # the reference's quarter cosine: lr·cos(π/2 · t), from lr down to 0 on the last step
    assert spd_cfg.lr_at(0) == 1.0 and spd_cfg.lr_at(50) == pytest.approx(math.cos(math.pi / 4))
    assert spd_cfg.lr_at(100) == pytest.approx(0.0, abs=1e-12)
    apd_cfg = APDConfig(steps=120, lr=2.0, lr_schedule="cosine", lr_warmup=1 / 6)  # 20 warm-up steps
    for step in (0, 10, 19, 20, 21, 69, 100, 119):
        assert apd_cfg.lr_at(step) == pytest.approx(_apd_reference_lr(step, 120, 2.0, 1 / 6), abs=1e-12), step
    assert apd_cfg.replace(lr_schedule="constant").lr_at(100) == 2.0


def _apd_reference_lr(step: int, steps: int, lr: float, warmup_pct: float) -> float:
    """The ApolloResearch/apd reference's schedule: linear warm-up, then lr·cos(π/2 · t/(T − 1)) over the
    T = steps − warm-up steps that follow (t counted from the end of warm-up)."""
    warmup = int(steps * warmup_pct)
    if step < warmup:
        return lr * step / warmup
    t, total = step - warmup, steps - warmup
    return lr * (1.0 if total == 1 else math.cos(0.5 * math.pi * t / (total - 1)))


def test_stochastic_masks_lie_between_g_and_one() -> None:
    g = {"a": torch.tensor([[0.0, 0.3, 1.0]]).expand(1000, 3)}
    m = spd.stochastic_masks(g, torch.Generator().manual_seed(0))["a"]
    assert (m >= g["a"]).all() and (m <= 1).all()
    assert torch.allclose(m.mean(0), torch.tensor([0.5, 0.65, 1.0]), atol=0.03)  # g + (1-g)/2 on average


def test_kl_output_loss() -> None:
    logits = torch.randn(4, 7)
    assert spd.output_loss(logits, logits, "kl").abs() < 1e-6
    p, q = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0]])  # KL(target p ‖ pred q)
    expected = 0.5 * torch.log(torch.tensor(0.5) / torch.softmax(q, -1)).sum()
    assert torch.allclose(spd.output_loss(q, p, "kl"), expected)


def test_batched_gates_equal_per_layer_gates() -> None:
    net = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2))
    dec = spd.SPDDecomposition(net, ["0", "2"], spd.SPDConfig(C=4, d_gate=3), torch.Generator().manual_seed(0))
    _, acts = dec.run_capturing_inputs(torch.randn(6, 3))
    together = dec.gate_preactivations(acts)
    for i, name in enumerate(["0", "2"]):
        alone = dec.ci(dec.inner(name, acts[name]), slice(4 * i, 4 * i + 4))
        assert torch.allclose(together[name], alone)


class Planted(nn.Module):
    """y = W2 ReLU(W1 x) + b: feature i is read by column i of W1 into its own hidden pair and written
    back by row i of W2, so its true mechanisms are one rank-one piece in each layer."""

    def __init__(self, n: int = 3, scales: tuple[float, ...] = (1.0, 1.6, 0.6)):
        super().__init__()
        h = 2 * n
        self.read = nn.Linear(n, h, bias=False)
        self.write = nn.Linear(h, n)
        g = torch.Generator().manual_seed(0)
        A, B = torch.zeros(h, n), torch.zeros(n, h)
        for i in range(n):
            a = (torch.rand(2, generator=g) + 0.5) * scales[i]
            A[2 * i : 2 * i + 2, i] = a
            B[i, 2 * i : 2 * i + 2] = a / a.pow(2).sum()
        with torch.no_grad():
            self.read.weight.copy_(A)
            self.write.weight.copy_(B)
            self.write.bias.fill_(0.1)
        eye = torch.eye(n)
        self.truth = {
            "read": torch.stack([torch.outer(A[:, i], eye[i]) for i in range(n)]),
            "write": torch.stack([torch.outer(eye[i], B[i]) for i in range(n)]),
        }

    def forward(self, x: Tensor) -> Tensor:
        return self.write(torch.relu(self.read(x)))


def sparse_batches(n: int, batch: int, p: float, g: torch.Generator) -> Iterator[Tensor]:
    while True:
        yield torch.rand(batch, n, generator=g) * (torch.rand(batch, n, generator=g) < p)


FAST = spd.SPDConfig(C=6, steps=800, batch_size=128, lr=2e-2, importance_minimality_coeff=1e-2, log_every=400)


def test_recovers_planted_mechanisms_of_an_unknown_model() -> None:
    net = Planted()
    flags = [p.requires_grad for p in net.parameters()]
    net.train()
    dec = spd.decompose(
        net, sparse_batches(3, FAST.batch_size, 0.25, torch.Generator().manual_seed(0)), ["read", "write"], FAST
    )
    for name in ("read", "write"):
        m = match(net.truth[name], dec.matrices(name).detach())
        assert m.mmcs > 0.98 and m.worst > 0.97, (name, m.summary())
        assert 0.9 < m.ml2r < 1.12, (name, m.summary())
    # each feature alone switches on one subcomponent per layer (a permuted identity)
    ci = dec.importances(torch.eye(3) * 0.75)
    for name in ("read", "write"):
        assert ((ci[name] > 0.5).sum(1) == 1).all(), ci[name]
    assert [p.requires_grad for p in net.parameters()] == flags and net.training  # the user's flags come back
    assert dec.history[-1]["faithfulness"] < 1e-3


def test_checkpoint_resume_is_bit_exact(tmp_path: Path) -> None:
    cfg = FAST.replace(steps=6, checkpoint_every=3, log_every=3)

    def run(run_dir: Path, resume: bool) -> spd.SPDDecomposition:
        g = torch.Generator().manual_seed(1)
        data = sparse_batches(3, 32, 0.25, g)
        return spd.decompose(
            Planted(), data, ["read", "write"], cfg, run_dir=run_dir, resume=resume, generators={"d": g}
        )

    full = run(tmp_path / "a", resume=False)
    shutil.rmtree(tmp_path / "a" / "checkpoints" / "step_00000006")  # as if killed after step 3's checkpoint
    resumed = run(tmp_path / "a", resume=True)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert [r["step"] for r in resumed.history] == [3.0, 6.0]
    full.save(tmp_path / "saved")
    loaded = spd.SPDDecomposition.load(Planted(), tmp_path / "saved")
    assert torch.equal(loaded.matrices("read"), full.matrices("read"))


def test_nan_loss_names_the_step() -> None:
    def data() -> Iterator[Tensor]:
        for step in range(100):
            yield torch.full((4, 3), float("nan")) if step == 2 else torch.rand(4, 3)

    with pytest.raises(AnatomistError, match="not finite at step 2"):
        spd.decompose(Planted(), data(), ["read"], FAST.replace(steps=10))


def test_bad_targets_and_data() -> None:
    with pytest.raises(AnatomistError, match="'reed' matches no module.*read"):
        spd.decompose(Planted(), [torch.rand(4, 3)], ["reed"], FAST)
    with pytest.raises(AnatomistError, match="no decomposable layer"):
        spd.decompose(nn.Sequential(nn.ReLU()), [torch.rand(4, 3)], ["*"], FAST)
    with pytest.raises(AnatomistError, match="ran out"):
        spd.decompose(Planted(), iter([torch.rand(4, 3)]), ["read"], FAST.replace(steps=3))


def test_gate_mlp_gradients() -> None:
    ci = spd.CausalImportance(2, 3, 4, torch.Generator().manual_seed(0)).double()
    s = torch.randn(5, 6, dtype=torch.double)
    s[[1, 3]] = 0.0  # all-zero rows take the shared s = 0 path
    s.requires_grad_(True)
    params = (ci.w_in, ci.b_in, ci.w_out, ci.b_out)
    assert torch.autograd.gradcheck(lambda s, *w: spd._GateMLP.apply(s, *w), (s, *params))
    # and it is the MLP the paper describes: w_outᵀ GELU(w_in s + b_in) + b_out per gate
    plain = (torch.nn.functional.gelu(s[..., None] * ci.w_in + ci.b_in) * ci.w_out).sum(-1) + ci.b_out
    assert torch.allclose(ci(s), plain)


def test_tms_5_2_recovery_short() -> None:
    model, cfg = pentagon_tms()
    truth = cfg.ground_truth(model).components["linear1"]
    conf = spd.SPDConfig(steps=600, batch_size=256, lr=2e-2, importance_minimality_coeff=1e-2, log_every=600)
    init = match(truth, spd.initial_decomposition(model, ["linear1", "linear2"], conf).matrices("linear1").detach())
    g = torch.Generator().manual_seed(0)
    batches = (cfg.sample_batch(conf.batch_size, g)[0] for _ in range(conf.steps))
    dec = spd.decompose(model, batches, ["linear1", "linear2"], conf)
    final = match(truth, dec.matrices("linear1").detach())
    # a random start scores ≈ 0.79 (worst ≈ 0.6); 600 short steps already single out every feature
    assert final.mmcs > 0.93 and final.worst > 0.8 and final.mmcs > init.mmcs + 0.1, (init.summary(), final.summary())
    ci = dec.importances(torch.eye(5) * 0.75)["linear1"]
    assert (ci.argmax(1).unique().numel() == 5) and (ci.max(1).values > 0.9).all(), ci
    assert torch.allclose(dec.matrices("linear2"), dec.matrices("linear1").transpose(1, 2))  # one tied set


def test_paper_rows_score_ignores_leakage_the_flattened_score_sees() -> None:
    from anatomist.runs.toy_scoring import rows_match

    model, cfg = pentagon_tms()
    truth = cfg.ground_truth(model).components["linear1"]  # [5, 2, 5]: W[:, f] e_fᵀ
    W = model.W.detach()
    exact = rows_match(truth, W)
    assert exact == pytest.approx({"mmcs_rows": 1.0, "min_cosine_rows": 1.0, "ml2r_rows": 1.0})
    leaky = truth.clone()
    leaky[0, :, 1] += 0.3 * W[:, 0]  # component 0 also reads feature 1, along feature 0's direction
    leaky[2] *= 2.0  # component 2 twice too large
    rows, flat = rows_match(leaky, W), match(truth, leaky)
    assert rows["min_cosine_rows"] == pytest.approx(1.0) and rows["ml2r_rows"] == pytest.approx(1.2)
    assert flat.worst < 0.97  # the flattened score sees component 0 reading two features



# --- the reference's later improvements (options of SPDConfig) -------------------------------------------


class EmbedThenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.proj = nn.Linear(4, 3)

    def forward(self, ids: Tensor) -> Tensor:
        return self.proj(torch.relu(self.embed(ids)))


def test_delta_component_makes_the_unmasked_model_the_target_exactly() -> None:
    torch.manual_seed(0)
    net, ids = EmbedThenLinear(), torch.randint(0, 7, (5, 6))
    cfg = spd.SPDConfig(C=2, delta_component=True)  # C = 2 < rank: the factors alone cannot be W
    dec = spd.initial_decomposition(net, ["embed", "proj"], cfg)
    assert dec.faithfulness_loss() > 1e-2
    torch.testing.assert_close(dec.run_with_masks(ids, dict.fromkeys(dec.targets)), net(ids), rtol=0, atol=1e-6)
    ones = {n: torch.ones(5, 6, 2) for n in dec.targets}
    torch.testing.assert_close(dec.run_with_masks(ids, ones), net(ids), rtol=0, atol=1e-6)
    without = dec.run_with_masks(ids, ones, delta_masks={})  # the delta dropped: the factors alone
    assert (without - net(ids)).abs().max() > 1e-2
    half = {n: torch.full((5, 6), 0.5) for n in dec.targets}  # half the delta on proj alone: linear in the mask
    expected = (dec.run_with_masks(ids, {"proj": ones["proj"]}) + dec.run_with_masks(ids, {"proj": ones["proj"]},
                                                                                      delta_masks={})) / 2
    torch.testing.assert_close(dec.run_with_masks(ids, {"proj": ones["proj"]}, half), expected)


def _exact_diagonal(scales: tuple[float, ...], cfg: spd.SPDConfig) -> tuple[nn.Module, spd.SPDDecomposition]:
    """y = diag(scales) x, decomposed exactly into its orthogonal rank-one pieces (V = I, U = diag)."""
    n = len(scales)
    net = nn.Sequential(nn.Linear(n, n, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.diag(torch.tensor(scales)))
    dec = spd.initial_decomposition(net, ["0"], cfg.replace(C=n))
    with torch.no_grad():
        dec.V["0"].copy_(torch.eye(n))
        dec.U["0"].copy_(torch.diag(torch.tensor(scales)))
    return net, dec


@pytest.mark.parametrize("scope", ["input", "batch"])
def test_pgd_finds_the_worst_mask(scope: str) -> None:
    # pieces that only ever help: the worst mask between g = 0 and 1 switches every piece off (sources 0),
    # and the loss there is the ablation's, mean((W x)²)
    cfg = spd.SPDConfig(pgd_recon_coeff=1.0, pgd_steps=3, pgd_step_size=0.5, pgd_scope=scope)
    net, dec = _exact_diagonal((1.0, 2.0, 3.0), cfg)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    g = {"0": torch.zeros(16, 3)}
    target = net(x).detach()
    sources, deltas = spd.pgd_sources(dec, x, target, g, torch.Generator().manual_seed(1))
    assert deltas == {} and sources["0"].shape == ((16, 3) if scope == "input" else (1, 3))
    assert torch.equal(sources["0"], torch.zeros_like(sources["0"]))
    found = spd._masked_loss(dec, x, target, {"0": spd.mix(g["0"], sources["0"])}, {})
    torch.testing.assert_close(found, target.square().mean())


def test_pgd_mask_is_at_least_as_bad_as_its_random_start() -> None:
    torch.manual_seed(0)
    net = Planted()
    cfg = spd.SPDConfig(C=5, pgd_recon_coeff=1.0, pgd_steps=2, pgd_step_size=0.05, delta_component=True)
    dec = spd.initial_decomposition(net, ["read", "write"], cfg)
    x = torch.rand(32, 3)
    _, acts = dec.run_capturing_inputs(x)
    g = {n: spd.lower_leaky(p).detach() for n, p in dec.gate_preactivations(acts).items()}
    target = net(x).detach()
    for seed in range(5):
        start_gen, pgd_gen = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        # the same first draws pgd_sources makes: one source per subcomponent, then one per delta component
        start = {n: torch.rand(c.shape, generator=start_gen) for n, c in g.items()}
        start_delta = {n: torch.rand(c.shape[:-1], generator=start_gen) for n, c in g.items()}
        random_loss = spd._masked_loss(dec, x, target, {n: spd.mix(c, start[n]) for n, c in g.items()}, start_delta)
        sources, deltas = spd.pgd_sources(dec, x, target, g, pgd_gen)
        pgd_loss = spd._masked_loss(dec, x, target, {n: spd.mix(c, sources[n]) for n, c in g.items()}, deltas)
        assert pgd_loss >= random_loss, seed
        assert set(deltas) == {"read", "write"} and all(((s >= 0) & (s <= 1)).all() for s in sources.values())


def test_every_reconstruction_loss_is_zero_for_an_exact_decomposition_with_importance_one() -> None:
    cfg = spd.SPDConfig(stochastic_recon_subset_coeff=1.0, pgd_recon_coeff=1.0, n_mask_samples=2)
    _, dec = _exact_diagonal((1.0, -2.0, 0.5), cfg)
    with torch.no_grad():
        dec.ci.b_out.fill_(5.0)  # every causal importance 1: every mask between g and 1 is 1
        dec.ci.w_out.zero_()
    _, terms = spd.spd_losses(dec, torch.randn(8, 3), 0, torch.Generator().manual_seed(0))
    for key in ("faithfulness", "stochastic_recon", "stochastic_recon_layerwise", "stochastic_recon_subset",
                "pgd_recon"):
        assert float(terms[key].detach()) < 1e-10, (key, terms[key])


def test_random_subsets_cover_every_size() -> None:
    g = torch.Generator().manual_seed(0)
    names = ["a", "b", "c", "d"]
    draws = [spd.random_subset(names, g) for _ in range(400)]
    sizes = torch.bincount(torch.tensor([len(d) for d in draws]), minlength=5)
    assert sizes[0] == 0 and (sizes[1:] > 70).all(), sizes  # k ~ U{1..4}: about 100 each
    assert all(d == sorted(set(d)) and set(d) <= set(names) for d in draws)


def test_frequency_weighted_minimality_and_annealed_p() -> None:
    g = {"a": torch.tensor([[1.0, 0.0], [1.0, 1.0]])}
    assert float(spd.importance_minimality_loss(g, 1.0)) == pytest.approx(1.5)  # means 1 and 0.5
    # sums over the batch 2 and 1: 1·(1 + ½·log2 3) + ½·(1 + ½·log2 2)
    expected = 1 + 0.5 * math.log2(3) + 0.5 * 1.5
    assert float(spd.importance_minimality_loss(g, 1.0, beta=0.5)) == pytest.approx(expected)
    cfg = spd.SPDConfig(steps=100, pnorm=2.0, pnorm_final=0.3, pnorm_anneal_start=0.1, pnorm_anneal_end=0.5)
    assert cfg.pnorm_at(0) == cfg.pnorm_at(10) == 2.0
    assert cfg.pnorm_at(49) == pytest.approx(0.3) and cfg.pnorm_at(90) == pytest.approx(0.3)
    assert cfg.pnorm_at(30) == pytest.approx(2.0 - 1.7 * 20 / 39)


def test_faithfulness_warmup_fits_the_weights_before_training() -> None:
    net = Planted()
    cfg = spd.SPDConfig(C=8, faithfulness_warmup_steps=300, faithfulness_warmup_lr=3e-2)
    cold = spd.initial_decomposition(net, ["read", "write"], cfg)
    warm = spd.faithfulness_warmup(spd.initial_decomposition(net, ["read", "write"], cfg))
    assert float(warm.faithfulness_loss().detach()) < 1e-3 * float(cold.faithfulness_loss().detach())
    ci_before = cold.ci.state_dict()
    assert all(torch.equal(v, warm.ci.state_dict()[k]) for k, v in ci_before.items())  # only the factors move
