"""Training loop: recovers planted features, e2e lowers KL, resumes bit-for-bit after SIGKILL, stops on bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from anatomist import AnatomistError, Site, capture
from anatomist.core import Checkpointer, load_tensors
from anatomist.features import SAEConfig, make_sae
from anatomist.features.base import TrainOutput
from anatomist.features.e2e import e2e_step, suffix_is_exact
from anatomist.features.objectives import LogitsKLLoss, StepValues, kl_loss, objective_terms, total_loss
from anatomist.features.train import TrainConfig, fold_scale, lr_factor, train_sae
from anatomist.runs import load_run_config, parse_run_config, run

pytestmark = pytest.mark.usefixtures("one_thread")


SCRIPT = '''
import os, signal, sys
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from anatomist.features.train import TrainConfig, train_sae

def tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(num_hidden_layers=3, hidden_size=16, intermediate_size=32, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=50, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(cfg).eval()

IDS = torch.randint(1, 50, (24, 8), generator=torch.Generator().manual_seed(1))

def config(**kw):
    base = dict(model="tiny", site="model.layers.1", steps=12, batch_size=16, lr=3e-3, checkpoint_every=4,
                log_every=1, eval_every=6, warmup_steps=3, seed=5,
                data=dict(cache=None, block_seqs=4, buffer_rows=48, model_batch_size=4, eval_seqs=4),
                sae=dict(arch="topk", d_in=16, d_sae=32, k=4))
    base.update(kw)
    return TrainConfig.parse(base)

def run(out_dir, kill_at=None, resume=False, **kw):
    def on_step(step, _log):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    return train_sae(config(**kw), out_dir, tiny_llama(), IDS, resume=resume, on_step=on_step)

if __name__ == "__main__":
    run(sys.argv[1], kill_at=int(sys.argv[2]))
'''


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = tmp_path_factory.mktemp("script") / "tiny_run.py"
    path.write_text(SCRIPT)
    spec = importlib.util.spec_from_file_location("tiny_run", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.path = path
    return mod


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted((run_dir / "sae").glob("*.safetensors"))
    assert files, f"no saved dictionary in {run_dir / 'sae'}"
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update({f"{f.name}:{k}": v for k, v in load_file(f).items()})
    return out


def test_lr_schedule_warms_up_and_decays_to_zero() -> None:
    cfg = TrainConfig.parse(dict(model="m", site="s", steps=100, warmup_steps=10, decay="linear", decay_frac=0.5,
                                 sae=dict(arch="topk", d_in=4, d_sae=8, k=2)))
    f = lr_factor(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == 1.0 and f(49) == 1.0
    assert f(75) == pytest.approx(0.5) and f(99) == pytest.approx(0.02)
    cos = lr_factor(cfg.replace(decay="cosine"))
    assert cos(75) == pytest.approx(0.5) and cos(50) == 1.0


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "jumprelu"])
def test_fold_scale_makes_the_dictionary_read_raw_activations(arch: str) -> None:
    torch.manual_seed(0)
    sae = make_sae(SAEConfig(arch=arch, d_in=8, d_sae=16, **({"k": 3} if "topk" in arch else {})))
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if arch == "jumprelu":  # thresholds are never negative (training clamps them at 0)
            sae.threshold.abs_()
    if arch == "batchtopk":
        sae.train_forward(torch.randn(64, 8))  # estimates the inference threshold
    x, s_in = torch.randn(32, 8) * 5, 0.3
    want_acts, want = sae.encode(x * s_in), sae(x * s_in)
    fold_scale(sae, s_in, s_in)
    torch.testing.assert_close(sae.encode(x), want_acts / s_in)
    torch.testing.assert_close(sae(x), want / s_in)


def test_kl_loss_direction_and_mask() -> None:
    p = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    q = torch.zeros(1, 2, 3)
    counted = torch.tensor([[True, False]])
    pp = p[0, 0].softmax(-1)
    want = float((pp * (pp.log() - torch.full((3,), 1 / 3).log())).sum())
    assert float(kl_loss(p, q, counted)) == pytest.approx(want)
    assert float(kl_loss(p, q, torch.tensor([[False, True]]))) == 0.0


def _kl_by_hand(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax p ‖ softmax q) per row, written out."""
    p = p_logits.double().softmax(-1)
    return (p * (p.log() - q_logits.double().softmax(-1).log())).sum(-1)


def test_e2e_kl_counts_every_position_the_last_included(script: Any) -> None:
    """e2e_sae's KL averages over every position: the last position's next-token distribution counts too."""
    model, ids, site = script.tiny_llama(), script.IDS[:3], Site("model.layers.1")
    a = capture(model, ids, [site])[site]
    torch.manual_seed(0)
    sae = make_sae(SAEConfig(arch="relu", d_in=16, d_sae=32))
    values = e2e_step(sae, model, ids, a, site, [], scale=2.0, exclude_bos=True, skip=False)
    assert values.logits is not None and values.clean_logits is not None
    assert values.logits.shape[:2] == ids.shape
    with torch.no_grad():
        torch.testing.assert_close(values.clean_logits, model(ids).logits)
    want = _kl_by_hand(values.clean_logits, values.logits.detach())[:, 1:].mean()  # BOS is never spliced
    assert float(LogitsKLLoss().calc_loss(values).detach()) == pytest.approx(float(want), rel=1e-5)


def test_downstream_term_is_the_papers_mean_of_mses() -> None:
    """e2e+ds by default: β/(L−l)·Σ_k MSE(â_k, a_k) in the model's units (Braun et al.); FVU per site on request."""
    g = torch.Generator().manual_seed(0)
    clean = {Site("l.2"): torch.randn(2, 5, 4, generator=g), Site("l.3"): 10 * torch.randn(2, 5, 4, generator=g)}
    spliced = {s: a + torch.randn(a.shape, generator=g) for s, a in clean.items()}
    keep = torch.ones(2, 5, dtype=torch.bool)
    keep[:, 0] = False  # BOS
    zero = torch.zeros(())
    out = TrainOutput(torch.zeros(8, 4), torch.zeros(8, 6), torch.zeros(6, dtype=torch.bool), zero, zero)
    values = StepValues(out, clean_downstream=clean, spliced_downstream=spliced, keep=keep)
    mses = [torch.nn.functional.mse_loss(spliced[s][:, 1:], a[:, 1:]) for s, a in clean.items()]
    fvus = [(spliced[s][:, 1:] - a[:, 1:]).pow(2).sum() / (a[:, 1:] - a[:, 1:].reshape(-1, 4).mean(0)).pow(2).sum()
            for s, a in clean.items()]
    cfg = TrainConfig.parse(dict(model="m", site="l.1", steps=1, objective="e2e+ds", ds_coeff=3.0,
                                 sae=dict(arch="relu", d_in=4, d_sae=6)))
    (_, ds_term) = cfg.losses
    assert ds_term.coeff == 3.0
    assert float(ds_term.calc_loss(values)) == pytest.approx(float(sum(mses) / 2), rel=1e-5)
    (_, fvu_term) = cfg.replace(ds_form="fvu").losses
    assert float(fvu_term.calc_loss(values)) == pytest.approx(float(sum(fvus) / 2), rel=1e-5)


def test_local_training_recovers_planted_directions(tmp_path: Path) -> None:
    """Rows x = 7·(k-sparse codes)·D + 3 through an identity 'model': the loop (input scaling, AuxK, folding) must
    find D's rows and the saved dictionary must read raw x."""
    g = torch.Generator().manual_seed(0)
    d, n_atoms, n = 16, 24, 8192
    atoms = torch.nn.functional.normalize(torch.randn(n_atoms, d, generator=g), dim=-1)
    codes = torch.zeros(n, n_atoms)
    idx = torch.rand(n, n_atoms, generator=g).argsort(-1)[:, :3]
    codes.scatter_(1, idx, torch.rand(n, 3, generator=g) + 0.5)
    x = 7 * codes @ atoms + 3
    cfg = TrainConfig.parse(dict(
        model="planted", site="0", steps=500, batch_size=256, lr=4e-3, log_every=100, eval_every=250,
        checkpoint_every=500, dead_tokens=2048,
        data=dict(cache=str(tmp_path / "acts"), block_seqs=1024, buffer_rows=4096, model_batch_size=1024,
                  eval_seqs=512),
        sae=dict(arch="topk", d_in=d, d_sae=48, k=3),
    ))
    sae, metrics = train_sae(cfg, tmp_path / "run", nn.Sequential(nn.Identity()), x)
    dec = torch.nn.functional.normalize(sae.W_dec.detach(), dim=-1)
    mmcs = (atoms @ dec.T).max(-1).values  # [n_atoms]
    assert float(mmcs.mean()) >= 0.95, mmcs
    assert metrics["fvu"] < 0.1 and metrics["l0"] <= 3  # the saved dictionary reads raw (unscaled) x
    assert "ce_clean" not in metrics  # no language model: reconstruction metrics only
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert any('"eval"' in line for line in lines) and any('"final"' in line for line in lines)


def test_e2e_lowers_kl_and_e2e_ds_reads_downstream_layers(tmp_path: Path, script: Any) -> None:
    _, first = script.run(tmp_path / "e0", objective="e2e", steps=1, batch_seqs=4, data=dict(
        cache=None, block_seqs=4, model_batch_size=4, eval_seqs=4))
    _, trained = script.run(tmp_path / "e1", objective="e2e", steps=60, batch_seqs=4, lr=1e-2, data=dict(
        cache=None, block_seqs=4, model_batch_size=4, eval_seqs=4))
    assert trained["kl"] < 0.5 * first["kl"]
    _, ds = script.run(tmp_path / "ds", objective="e2e+ds", steps=3, batch_seqs=4, data=dict(
        cache=None, block_seqs=4, model_batch_size=4, eval_seqs=4))
    lines = (tmp_path / "ds" / "metrics.jsonl").read_text()
    assert '"downstream_mse"' in lines and '"kl"' in lines


def test_skipping_the_blocks_before_the_site_changes_nothing(script: Any) -> None:
    model, ids, site = script.tiny_llama(), script.IDS[:3], Site("model.layers.1")
    a = capture(model, ids, [site])[site]
    assert suffix_is_exact(model, ids, site, a)
    assert not suffix_is_exact(model, ids, site, a + 1)  # the check can fail
    torch.manual_seed(0)
    sae = make_sae(SAEConfig(arch="relu", d_in=16, d_sae=32))
    grads, losses = [], []
    for skip in (False, True):
        values = e2e_step(sae, model, ids, a, site, [Site("model.layers.2")], scale=2.0, exclude_bos=True,
                          skip=skip)
        loss, _ = total_loss(objective_terms("e2e+ds", kl_coeff=1.0, ds_coeff=0.5), values)
        sae.zero_grad()
        loss.backward()
        losses.append(loss.detach())
        grads.append(sae.W_enc.grad.clone())
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1])
    assert float(grads[0].abs().sum()) > 0


def test_e2e_from_the_cache_matches_streaming(tmp_path: Path, script: Any) -> None:
    data = dict(block_seqs=4, model_batch_size=4, eval_seqs=4)
    _, streamed = script.run(tmp_path / "s", objective="e2e", steps=6, batch_seqs=4, data={**data, "cache": None})
    _, cached = script.run(tmp_path / "c", objective="e2e", steps=6, batch_seqs=4,
                           data={**data, "cache": str(tmp_path / "acts")})
    assert (tmp_path / "acts" / "manifest.json").is_file()
    assert cached["kl"] == pytest.approx(streamed["kl"], rel=1e-4)
    assert '"skip_blocks_before_site": true' in (tmp_path / "c" / "metrics.jsonl").read_text()


@pytest.mark.slow  # the same kill-and-resume through `anatomist run` is in the fast suite (below)
def test_sigkill_then_resume_gives_identical_weights(tmp_path: Path, script: Any) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
           "OMP_NUM_THREADS": str(torch.get_num_threads()), "ANATOMIST_PROGRESS": "0"}
    killed = subprocess.run([sys.executable, str(script.path), str(tmp_path / "b"), "7"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert Checkpointer(tmp_path / "b").latest() == 4 and not (tmp_path / "b" / "sae").exists()
    script.run(tmp_path / "b", resume=True)  # resumes from step 4
    assert '"event": "resume", "step": 4' in (tmp_path / "b" / "metrics.jsonl").read_text()
    script.run(tmp_path / "a")  # uninterrupted
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_nan_activations_stop_with_step_and_site_and_keep_last_checkpoint(tmp_path: Path, script: Any) -> None:
    model = script.tiny_llama()
    calls = [0]

    def poison(_m: nn.Module, _args: Any, out: Any) -> Any:
        calls[0] += 1
        if calls[0] > 6:  # harvest forwards from the 7th on give NaN (one block of 4 sequences per forward)
            out[0].fill_(float("nan"))
        return out

    model.model.layers[0].register_forward_hook(poison)
    cfg = script.config(checkpoint_every=1, data=dict(
        cache=None, block_seqs=4, buffer_rows=8, model_batch_size=4, eval_seqs=4))
    with pytest.raises(AnatomistError, match=r"step (\d+): NaN or Inf in activations at site 'model.layers.1:output'"
                       ) as err:
        train_sae(cfg, tmp_path / "run", model, script.IDS)
    step = int(str(err.value).split()[1].rstrip(":"))
    assert step > 1 and f"last good checkpoint: step {step - 1}" in str(err.value)
    ckpt = Checkpointer(tmp_path / "run")
    assert ckpt.latest() == step - 1
    weights = load_tensors(ckpt.folder(step - 1) / "model.safetensors")
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())


def test_d_in_mismatch_is_named_before_harvesting(tmp_path: Path, script: Any) -> None:
    cfg = script.config(sae=dict(arch="topk", d_in=12, d_sae=32, k=4),
                        data=dict(cache=str(tmp_path / "acts")))
    with pytest.raises(AnatomistError, match=r"d_in 12 but site 'model.layers.1:output' has width 16"):
        train_sae(cfg, tmp_path / "run", script.tiny_llama(), script.IDS)
    assert not (tmp_path / "acts").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, script: Any) -> Path:
    """The script's tiny Llama saved as a local HF folder, its token ids as a file, and a sae-train YAML over both."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("tiny-run")
    script.tiny_llama().save_pretrained(folder / "model")
    save_file({"inputs": script.IDS.contiguous()}, str(folder / "ids.safetensors"))
    cfg = script.config(model=str(folder / "model")).model_dump(mode="json")
    cfg["data"]["inputs"] = str(folder / "ids.safetensors")
    (folder / "sae.yaml").write_text(yaml.safe_dump({"kind": "sae-train", **cfg}))
    return folder / "sae.yaml"


KILLED_RUN = """
import os, signal, sys
from anatomist.core.checkpoint import Checkpointer
save = Checkpointer.save
def save_then_die(self, step, *args, **kwargs):  # SIGKILL right after the checkpoint of step 4 is on disk
    save(self, step, *args, **kwargs)
    if step == 4:
        os.kill(os.getpid(), signal.SIGKILL)
Checkpointer.save = save_then_die
from anatomist.cli import main
sys.argv = ["anatomist", *sys.argv[1:]]
main()
"""


def test_anatomist_run_sigkilled_then_resumed_gives_identical_weights(tmp_path: Path, tiny_run: Path) -> None:
    from typer.testing import CliRunner

    from anatomist.cli import app

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
           "OMP_NUM_THREADS": str(torch.get_num_threads()), "ANATOMIST_PROGRESS": "0"}
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, "run", str(tiny_run), "--out", str(tmp_path / "b")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert Checkpointer(tmp_path / "b").latest() == 4 and not (tmp_path / "b" / "metrics.json").exists()
    shutil.copytree(tmp_path / "b", tmp_path / "a")
    res = CliRunner().invoke(app, ["run", str(tiny_run), "--out", str(tmp_path / "b"), "--resume", "--json"])
    assert res.exit_code == 0, res.output
    assert '"event": "resume", "step": 4' in (tmp_path / "b" / "metrics.jsonl").read_text()
    with pytest.raises(AnatomistError, match="newest checkpoint: step 4.*--resume.*another --out"):
        run(load_run_config(str(tiny_run)), tmp_path / "a")  # no --resume into a used folder: refused, nothing lost
    assert Checkpointer(tmp_path / "a").latest() == 4
    fresh = run(load_run_config(str(tiny_run)), tmp_path / "fresh")
    assert '"resume"' not in (tmp_path / "fresh" / "metrics.jsonl").read_text()
    a, b = _weights(tmp_path / "fresh"), _weights(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads(res.stdout)["numbers"]["fvu"] == fresh.metrics["fvu"]
    assert all((tmp_path / "b" / f).is_file() for f in ("config.yaml", "metrics.json", "provenance.json"))


def test_resuming_with_another_config_is_refused(tmp_path: Path, tiny_run: Path) -> None:
    cfg = load_run_config(str(tiny_run), ["steps=2"])
    run(cfg, tmp_path / "r")
    longer = run(cfg.replace(steps=3), tmp_path / "r", resume=True)  # training longer is a resume
    # said truthfully: the config and metrics hold the new length, and where this process took over
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["steps"] == 3
    assert longer.metrics["steps"] == 3 and longer.metrics["resumed_from_step"] == 2
    with pytest.raises(AnatomistError, match="already at step 3, past the 2 steps"):
        run(cfg, tmp_path / "r", resume=True)  # fewer steps than done: refused, not relabelled
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["steps"] == 3
    with pytest.raises(AnatomistError, match="differs in lr"):
        run(cfg.replace(lr=1e-3), tmp_path / "r", resume=True)


def test_experiment_yaml_loads_as_a_sae_train_run() -> None:
    cfg = load_run_config(str(Path(__file__).parents[1] / "experiments" / "smollm2_resid_topk.yaml"))
    assert cfg.kind == "sae-train" and cfg.sae.arch == "topk" and cfg.sae.k == 32  # type: ignore[attr-defined]
    assert not hasattr(cfg.sae, "l1_coeff")  # each architecture holds only its own fields
    for name in ("smollm2_e2e_vs_local", "dictsci_smollm2_saes", "dictsci_smollm2_saes_long"):
        spec = yaml.safe_load((Path(__file__).parents[1] / "experiments" / f"{name}.yaml").read_text())
        for overrides in spec["runs"].values():  # the comparison script runs each as a sae-train kind
            assert parse_run_config({"kind": "sae-train", **spec["base"], **overrides}).kind == "sae-train"


def test_cli_train_then_eval_json(tmp_path: Path, tiny_lm: Path) -> None:
    from typer.testing import CliRunner

    from anatomist.cli import app

    runner = CliRunner()
    cfg = {"kind": "sae-train", "model": str(tiny_lm), "site": "model.layers.0", "steps": 4, "batch_size": 64,
           "sae": {"arch": "relu", "d_in": 16, "d_sae": 32},
           "data": {"seq_len": 16, "n_seqs": 8, "eval_seqs": 2, "cache": None, "block_seqs": 4}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    res = runner.invoke(app, ["sae", "train", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "run"), "--json"])
    assert res.exit_code == 0, res.output
    trained = json.loads(res.stdout)["numbers"]
    assert trained["n_predictions"] == 2 * 14 and 0 <= trained["fvu"] < 10
    args = ["sae", "eval", str(tmp_path / "run" / "sae"), "--model", str(tiny_lm), "--n-seqs", "2",
            "--seq-len", "16", "--json"]
    res = runner.invoke(app, [*args, "--skip-seqs", "8", "--site", "model.layers.0", "--out", str(tmp_path / "eval")])
    assert res.exit_code == 0, res.output
    evaluated = json.loads(res.stdout)
    assert evaluated["kind"] == "sae-eval" and "loss recovered" in evaluated["summary"]
    numbers = evaluated["numbers"]
    # the same held-out sequences as the training run's final evaluation: the same numbers
    assert numbers["ce_increase"] == pytest.approx(trained["ce_increase"], rel=1e-5)
    assert {k for k in numbers if k.startswith("density_histogram.")} == {
        f"density_histogram.{k}" for k in ("log10_rate_edges", "counts", "dead")}
    assert all((tmp_path / "eval" / f).is_file() for f in ("config.yaml", "metrics.json", "provenance.json"))
    # without --skip-seqs the rows after the 8 its run trained on are evaluated, and the metrics say so
    res = runner.invoke(app, [*args, "--site", "model.layers.0", "--out", str(tmp_path / "eval-default")])
    assert res.exit_code == 0, res.output
    default = json.loads(res.stdout)["numbers"]
    assert default["rows"] == "held out: sequences 8..10" and default["skip_seqs"] == 8
    assert default["ce_increase"] == numbers["ce_increase"]
    res = runner.invoke(app, [*args, "--skip-seqs", "0", "--site", "model.layers.0", "--out", str(tmp_path / "e0")])
    assert "2 of them seen in training" in json.loads(res.stdout)["numbers"]["rows"]
    res = runner.invoke(app, [*args, "--site", "model.layers.0.mlp.up_proj", "--out", str(tmp_path / "eval2")])
    assert res.exit_code != 0 and "d_in 16 but site 'model.layers.0.mlp.up_proj:output' has width 32" in str(
        res.exception)


def test_provenance_names_the_data_actually_used(tmp_path: Path) -> None:
    """Model inputs from a file (here images) are recorded as that file's examples, never as corpus tokens."""
    from safetensors.torch import save_file

    from anatomist.core.provenance import read_provenance

    images = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    save_file({"inputs": images}, str(tmp_path / "images.safetensors"))
    cfg = parse_run_config({
        "kind": "sae-train", "model": "mnist-cnn", "site": "classifier.relu3", "steps": 2, "batch_size": 16,
        "data": {"inputs": str(tmp_path / "images.safetensors"), "n_seqs": 32, "eval_seqs": 8, "cache": None,
                 "block_seqs": 8, "buffer_rows": 32, "model_batch_size": 8},
        "sae": {"arch": "topk", "d_in": 128, "d_sae": 32, "k": 4}})
    run(cfg, tmp_path / "run")
    train, held_out = read_provenance(tmp_path / "run")["data"]
    assert train["name"] == f"inputs file {tmp_path / 'images.safetensors'} (train, rows 0..32)"
    assert held_out["name"].endswith("(held out, rows 32..40)")
    assert (train["n_examples"], held_out["n_examples"]) == (32, 8)
    assert "n_tokens" not in train and "wiki" not in json.dumps([train, held_out])
