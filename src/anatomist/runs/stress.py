"""Run kinds `stress`, `compare` and `lm-backdoor`: can a model hide from the lenses, and how do the lenses compare.

- stress: every lens × every stressor on the planted toy (`anatomist.stress`): a score against its threshold and
  a verdict per cell, the stressed model's output change per stressor, and the obfuscation control (fixed probe
  before/after, refitted probe). Sharkey, *Circumventing Interpretability* (2022).
- compare: one model, one dataset, several decompositions in one vocabulary (FVU, output/CE increase with the
  decomposition spliced in, L0, dead/dense, description length in bits, MMCS/ML2R on toys), as metrics and a
  report page (`anatomist.stress.compare`).
- lm-backdoor: a trigger-conditioned backdoor fine-tuned into a tiny Llama, with a clean fine-tuned control: attack
  success, clean loss, and whether an SAE, a probe (both fitted on clean text) and a data-free token scan see it
  (`anatomist.stress.lm_backdoor`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from anatomist.core.errors import AnatomistError
from anatomist.core.io import atomic_write_text
from anatomist.core.provenance import data_record, model_record
from anatomist.data import CORPUS_HELP, load_corpus
from anatomist.dictionaries.mdl import description_length
from anatomist.evaluate import evaluate_dictionary
from anatomist.features.base import SparseDictionary
from anatomist.features.bases import BASES
from anatomist.features.train import TrainConfig, train_sae
from anatomist.interpret.llm import LLMSpec, make_model
from anatomist.interpret.reading import fit_baseline, site_rows
from anatomist.mechanisms import spd
from anatomist.nets.assets import LoadedModel, load_model
from anatomist.nets.sites import Site
from anatomist.nets.toys import TOYS, load_toy
from anatomist.nets.toys.moe_lm import lm_data, smollm2_tokenizer
from anatomist.report.html import esc, figure, standalone_page, table
from anatomist.runs.autointerp import AutointerpConfig, interpretability
from anatomist.runs.base import Context, Outcome, RunConfig, register
from anatomist.runs.plots import pyplot, save_figure
from anatomist.runs.toy_scoring import default_targets, toy_batches, toy_report
from anatomist.stress.compare import (
    ToyData,
    add_robustness,
    columns,
    dictionary_config,
    stress_robustness,
    toy_data,
    toy_row,
)
from anatomist.stress.compare import markdown as compare_markdown
from anatomist.stress.lenses import LENSES, Budget
from anatomist.stress.lm_backdoor import (
    LensData,
    attack_success,
    clean_losses,
    default_backdoor,
    fine_tune,
    has_trigger,
    lens_verdicts,
)
from anatomist.stress.lm_reparam import pair_rows, reparam_match, reparameterised_pair
from anatomist.stress.stressors import STRESSORS
from anatomist.stress.table import check_names, markdown, stress_table

TABLE = "stress_table.md"
COMPARE_TABLE = "compare_table.md"


class StressConfig(RunConfig):
    """Stress-test lenses against stressors on a planted toy; a score and a verdict per lens × stressor."""

    kind: Literal["stress"] = "stress"
    smoke: ClassVar[tuple[str, ...]] = ("lenses=[sae_topk,probe,neurons,resid_axes,bilinear]",
                                        "stressors=[none,rotate_residual,backdoor]", "budget.sae_steps=20",
                                        "budget.rows=1024", "train_steps=5")
    lenses: list[str] = Field(default_factory=lambda: list(LENSES), description=f"lenses, of: {', '.join(LENSES)}")
    stressors: list[str] = Field(default_factory=lambda: list(STRESSORS),
                                 description=f"stressors, of: {', '.join(STRESSORS)}")
    n_features: int = Field(8, gt=1, description="planted features of the toy (residual width n + 1)")
    budget: Budget = Field(default_factory=lambda: Budget.model_validate({}), description="each lens's training")
    train_steps: int = Field(300, gt=0, description="steps of the drift and obfuscation training")
    seed: int = Field(0, description="seed of the stressors' draws and the lenses' fits")


def _say(stressor: str, lens: str, cell: dict[str, Any]) -> None:
    score = "n/a" if cell["score"] is None else f"{cell['score']:.3f}"
    print(f"stress {stressor} × {lens}: {score} {cell['verdict']}", file=sys.stderr, flush=True)


def _counts(cells: dict[str, dict[str, Any]]) -> dict[str, Any]:
    flat = [c["verdict"] for row in cells.values() for c in row.values()]
    return {v: flat.count(v) for v in ("found", "missed", "n/a")}


@register(StressConfig)
def stress(cfg: StressConfig, ctx: Context) -> Outcome:
    check_names(cfg.lenses, cfg.stressors)
    result = stress_table(cfg.lenses, cfg.stressors, cfg.budget, n_features=cfg.n_features, seed=cfg.seed,
                          train_steps=cfg.train_steps, on_cell=_say)
    (ctx.out / TABLE).write_text(markdown(result) + "\n")
    scores = {lens: {s: result["cells"][s][lens]["score"] for s in cfg.stressors} for lens in cfg.lenses}
    verdicts = {lens: {s: result["cells"][s][lens]["verdict"] for s in cfg.stressors} for lens in cfg.lenses}
    refits = {lens: {s: c[lens]["refit"] for s, c in result["cells"].items() if "refit" in c[lens]}
              for lens in cfg.lenses}
    counts = _counts(result["cells"])
    metrics = {"scores": scores, "verdicts": verdicts, "stressors": result["stressors"], "counts": counts,
               "table": TABLE}
    if any(refits.values()):
        metrics["refit_scores"] = {k: v for k, v in refits.items() if v}
    summary = (f"{len(cfg.lenses)} lenses × {len(cfg.stressors)} stressors on a {cfg.n_features}-feature planted toy: "
               f"{counts['found']} found, {counts['missed']} missed, {counts['n/a']} n/a (table in {TABLE})")
    data = [data_record("planted toy data (synthetic, sparse signed features)", n_examples=cfg.budget.rows)]
    return Outcome(metrics, summary, data=data, access=["weights", "activations", "gradients", "training_data"],
                   value=result)


class CompareConfig(RunConfig):
    """Compare decompositions of one model's site on one dataset: FVU, spliced loss, L0, bits, MMCS, robustness."""

    kind: Literal["compare"] = "compare"
    # the smallest toy (cached once trained) in place of the experiment's; LM settings shrink an LM comparison
    smoke: ClassVar[tuple[str, ...]] = ("model=tms-5-2", "toy_steps=null",
                                        "decompositions=[sae_topk,transcoder,pca,spd]", "steps=5", "spd_steps=3",
                                        "rows=2048", "n_seqs=2", "eval_seqs=2", "seq_len=16", "spliced_seqs=1",
                                        "reparam_seqs=2")
    model: str = Field("tms-40-10", description="a toy (tms-*, resid-mlp-*; trained once, then cached) or a "
                       "language model (smollm2, ...)")
    toy_steps: int | None = Field(None, gt=0, description="toy: its training steps (null: the published count); "
                                  "a toy trained once is cached")
    site: str = Field("model.layers.6", description="language model: the site read (toys: where their features live)")
    transcoder_target: str = Field("model.layers.6.mlp:output", description="language model: what the transcoder "
                                   "predicts (it reads the same layer's mlp input)")
    decompositions: list[str] = Field(
        default_factory=lambda: ["sae_topk", "sae_jumprelu", "transcoder", "neurons", "pca", "ica", "random", "spd"],
        description="sae_topk, sae_jumprelu, sae_relu, transcoder, spd (toys only), and the bases neurons, pca, ica, "
        "random")
    d_sae: int | None = Field(None, gt=0, description="latents per dictionary (null: toy 2 × features, LM 8 × d)")
    k: int = Field(4, gt=0, description="TopK's active latents per input")
    steps: int = Field(2000, gt=0, description="training steps of each dictionary")
    batch_size: int = Field(1024, gt=0, description="rows per training step of each dictionary")
    spd_steps: int = Field(2000, gt=0, description="SPD steps (toys)")
    rows: int = Field(32768, gt=0, description="toy: rows drawn from its data distribution")
    corpus: str = Field("wiki", description=CORPUS_HELP)
    seq_len: int = Field(128, gt=1, description="language model: tokens per sequence")
    n_seqs: int = Field(256, gt=0, description="language model: training sequences")
    eval_seqs: int = Field(16, gt=0, description="language model: held-out sequences evaluated")
    spliced_seqs: int = Field(8, gt=0, description="language model: held-out sequences spliced for CE/KL")
    stress_run: str | None = Field(None, description="toy: a finished `stress` run folder: adds each lens's share of "
                                   "stress cells found as stress_robustness")
    reparam: bool = Field(True, description="language model: refit each decomposition on an exactly reparameterised "
                          "copy of the model and with another seed (reparam_mmcs, reparam_control)")
    reparam_seqs: int = Field(32, gt=0, description="language model: training sequences the reparameterisation "
                              "fits use")
    reparam_steps: int | None = Field(None, gt=0, description="language model: training steps of those fits "
                                      "(null: steps)")
    interpret_features: int = Field(20, ge=0, description="language model: features sampled per decomposition for "
                                    "the interpretability column (the autointerp run's pipeline; 0: no column)")
    interpret_seqs: int = Field(32, gt=0, description="language model: held-out sequences (after the training and "
                                "evaluation ones) the interpretability contexts come from")
    judge: LLMSpec | None = Field(None, description="language model: the model that explains and simulates features "
                                  "(the simulation score); null: only the judge-free keyword proxy")
    seed: int = Field(0, description="seed of the data draws and the fits")
    device: str = Field("cpu", description="cpu, cuda or auto")


def _toy_rows(cfg: CompareConfig, ctx: Context) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], str]:
    toy = load_toy(cfg.model, steps=cfg.toy_steps, device=cfg.device)
    data = toy_data(toy, cfg.rows, cfg.seed)
    d_sae = cfg.d_sae or 2 * toy.ground_truth.n_features
    rows = {}
    for name in cfg.decompositions:
        if name == "spd":
            rows[name] = spd_row(toy, data, cfg.spd_steps, cfg.seed)
        else:
            rows[name] = toy_row(name, data, d_sae, cfg.k, cfg.steps, cfg.seed, cfg.batch_size)
        _say_row(name, rows[name])
    where = f"{cfg.model} at {data.site}"
    return rows, [model_record(cfg.model, toy.model)], where


def _say_row(name: str, row: dict[str, Any]) -> None:
    text = ", ".join(f"{k} {v:.3g}" for k, v in row.items() if isinstance(v, float))
    print(f"compare {name}: {text}", file=sys.stderr, flush=True)


def _lm_train_config(cfg: CompareConfig, name: str, d: int, d_sae: int) -> TrainConfig:
    target = cfg.transcoder_target if name == "transcoder" else None
    site = Site.parse(cfg.transcoder_target).module + ":input" if name == "transcoder" else cfg.site
    sae = dictionary_config(name, d, d_sae, cfg.k, d_out=d if target else None).model_dump()
    return TrainConfig.parse({
        "model": cfg.model, "site": site, "target_site": target, "sae": sae, "steps": cfg.steps,
        "batch_size": cfg.batch_size, "lr": 1e-3, "seed": cfg.seed, "device": cfg.device,
        "log_every": max(1, cfg.steps // 10), "eval_every": 10**9, "checkpoint_every": 10**9, "eval_ce_seqs": 0,
        "data": {"corpus": cfg.corpus, "seq_len": cfg.seq_len, "n_seqs": cfg.n_seqs, "eval_seqs": cfg.eval_seqs,
                 "cache": None, "block_seqs": min(32, cfg.n_seqs)}})


def _lm_rows(cfg: CompareConfig, ctx: Context) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], str]:
    if "spd" in cfg.decompositions:
        raise AnatomistError("compare: spd is offered on toys only (on a language model run `spd-lm` apart)")
    loaded = load_model(cfg.model, device=cfg.device)
    if loaded.tokenizer is None:
        raise AnatomistError(f"compare: model '{cfg.model}' has no tokenizer; give a toy or a language model")
    model = loaded.model.eval()
    ids = load_corpus(cfg.corpus).tokenize(loaded.tokenizer, cfg.seq_len, cfg.n_seqs + cfg.eval_seqs)
    train_ids, eval_ids = ids[: cfg.n_seqs], ids[cfg.n_seqs :]
    site = Site.parse(cfg.site)
    train_rows, eval_rows = site_rows(model, train_ids, site), site_rows(model, eval_ids, site)
    d = train_rows.shape[1]
    rows, saes = {}, {}
    for name in cfg.decompositions:
        if name in BASES:
            sae: SparseDictionary = fit_baseline(name, train_rows, cfg.seed)  # type: ignore[arg-type]
            read, write = site, None
        else:
            tc = _lm_train_config(cfg, name, d, cfg.d_sae or 8 * d)
            sae, _ = train_sae(tc, ctx.out / name, model, ids)
            read, write = Site.parse(tc.site), Site.parse(tc.target_site) if tc.target_site else None
        numbers = evaluate_dictionary(sae, model, eval_ids, read, target_site=write, spliced_seqs=cfg.spliced_seqs)
        rows[name] = _lm_numbers(numbers, sae, eval_rows if write is None else None)
        saes[name] = (sae, str(read))
        _say_row(name, rows[name])
    if cfg.reparam:
        _add_reparam(cfg, model, train_ids[: cfg.reparam_seqs], rows, d)
    if cfg.interpret_features:
        _add_interpretability(cfg, loaded, saes, rows, ctx.out)
    return rows, [model_record(cfg.model, model)], f"{cfg.model} at {site}"


def _add_interpretability(cfg: CompareConfig, loaded: LoadedModel, saes: dict[str, tuple[SparseDictionary, str]],
                          rows: dict[str, dict[str, Any]], out: Path) -> None:
    """keyword (and simulation, with a judge): the autointerp run's means over sampled features, on sequences
    held out from every fit and evaluation above."""
    sub = AutointerpConfig.parse({
        "model": cfg.model, "site": cfg.site, "corpus": cfg.corpus, "seq_len": cfg.seq_len,
        "n_seqs": cfg.interpret_seqs, "skip_seqs": cfg.n_seqs + cfg.eval_seqs, "n_features": cfg.interpret_features,
        "scorers": ["simulation"] if cfg.judge else [], "activation_cache": None, "seed": cfg.seed,
        **({"explainer": cfg.judge.model_dump()} if cfg.judge else {})})
    judge = make_model(cfg.judge, sub.cache) if cfg.judge else None
    table = interpretability(sub, loaded, saes, out, (judge, judge))
    for name, got in table.items():
        rows[name] |= {k: got.get(k) for k in ("keyword", "simulation") if k in got}
        _say_row(name, rows[name])


def _add_reparam(cfg: CompareConfig, model: Any, ids: torch.Tensor, rows: dict[str, dict[str, Any]], d: int) -> None:
    """reparam_mmcs and reparam_control of every decomposition (`anatomist.stress.lm_reparam`)."""
    a, b, rotation = reparameterised_pair(model, cfg.seed)
    settings = {"d_sae": cfg.d_sae or 8 * d, "k": cfg.k, "steps": cfg.reparam_steps or cfg.steps,
                "batch_size": cfg.batch_size}
    at_site = pair_rows(a, b, rotation, ids, cfg.site)
    mlp = Site.parse(cfg.transcoder_target).module
    for name in rows:
        pair = pair_rows(a, b, rotation, ids, mlp + ":input", cfg.transcoder_target) if name == "transcoder" \
            else at_site
        rows[name] |= reparam_match(name, pair, settings, cfg.seed)
        _say_row(name, rows[name])


def _lm_numbers(numbers: dict[str, Any], sae: SparseDictionary, rows: torch.Tensor | None) -> dict[str, Any]:
    keep = ("fvu", "ce_increase", "kl", "loss_recovered", "l0")
    out: dict[str, Any] = {k: numbers[k] for k in keep if k in numbers}
    out["dead"], out["dense"] = numbers.get("dead_fraction"), numbers.get("dense_fraction")
    if rows is not None:
        out["bits_per_input"] = description_length(sae, rows)["code_bits_per_input"]
    return out


def spd_row(toy: Any, data: ToyData, steps: int, seed: int) -> dict[str, Any]:
    """SPD on the toy's paper layers (a short budget): MMCS/ML2R against the true pieces (`toy_report`), CI L0,
    and the output with every subcomponent masked at its causal importance."""
    targets = default_targets(toy)
    cfg = spd.SPDConfig(C=toy.ground_truth.n_features + 10, steps=steps, batch_size=1024, lr=3e-3, seed=seed,
                        log_every=10**9)
    dec = spd.decompose(toy.model, toy_batches(toy, 1024, torch.Generator().manual_seed(seed)), targets, cfg)
    report = toy_report(toy, targets, dec.matrices, dec.importances)
    with torch.no_grad():
        out = dec.run_with_masks(data.x, dec.importances(data.x))
    change = float((out - data.clean).pow(2).sum() / data.clean.pow(2).sum())
    loss = float(data.loss(out, data.labels) - data.loss(data.clean, data.labels))
    return {"mmcs": report.get("mmcs"), "ml2r": report.get("ml2r"), "l0": report["ci_l0_total"],
            "output_change": change, "loss_increase": loss}


def write_plots(rows: Mapping[str, Mapping[str, Any]], out: Path) -> list[str]:
    """One bar chart per column (decompositions with no value for it left out); returns the file names."""
    plt = pyplot()
    files = []
    for col in columns(rows):
        have = [(n, float(r[col])) for n, r in rows.items() if r.get(col) is not None]
        fig, ax = plt.subplots(figsize=(4.2, 2.6))
        ax.bar([n for n, _ in have], [v for _, v in have], color="C0")
        ax.set_title(col)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        name = f"compare_{col}.png"
        save_figure(fig, out / name, dpi=90)
        files.append(name)
    return files


def write_page(rows: Mapping[str, Mapping[str, Any]], title: str, out: Path, plots: list[str]) -> Path:
    """compare.html: the table and a plot per column."""
    cols = columns(rows)
    body = f"<h1>{esc(title)}</h1>" + table(["decomposition", *cols], [[n, *(r.get(c) for c in cols)]
                                                                         for n, r in rows.items()])
    body += "".join(figure(p, p.removeprefix("compare_").removesuffix(".png")) for p in plots)
    path = out / "compare.html"
    atomic_write_text(path, standalone_page(title, body))
    return path


@register(CompareConfig)
def compare(cfg: CompareConfig, ctx: Context) -> Outcome:
    is_toy = cfg.model in TOYS
    rows, models, where = (_toy_rows if is_toy else _lm_rows)(cfg, ctx)
    add_robustness(rows, stress_robustness(cfg.stress_run))
    plots = write_plots(rows, ctx.out)
    write_page(rows, f"Decompositions of {where}", ctx.out, plots)
    (ctx.out / COMPARE_TABLE).write_text(compare_markdown(rows) + "\n")
    clean = {n: {k: v for k, v in r.items() if v is not None} for n, r in rows.items()}
    summary = f"{len(rows)} decompositions of {where}: " + "; ".join(
        f"{n} FVU {r['fvu']:.3g}" for n, r in rows.items() if r.get("fvu") is not None)
    access = ["weights", "activations", "outputs"] + (["training_data"] if is_toy else [])
    return Outcome({"decompositions": clean, "page": "compare.html", "table": COMPARE_TABLE}, summary,
                   models=models, access=access, value=rows)


class LMBackdoorConfig(RunConfig):
    """Plant a trigger-conditioned backdoor in a tiny Llama; attack success, clean loss, and what each lens sees."""

    kind: Literal["lm-backdoor"] = "lm-backdoor"
    smoke: ClassVar[tuple[str, ...]] = ("toy_steps=2", "steps=2", "batch_size=4", "fit_rows=8", "test_rows=4",
                                        "d_sae=16", "k=2", "sae_steps=3")
    toy: str = Field("llama-lm-1", description="the LM toy (llama-lm-1, llama-lm-2; trained once, then cached)")
    toy_steps: int | None = Field(None, gt=0, description="the toy's training steps (null: its recipe's)")
    target: int = Field(20, ge=0, description="the planted next token after the trigger (an id of the toy's "
                        "vocabulary; the trigger is its three least frequent tokens)")
    steps: int = Field(300, gt=0, description="fine-tuning steps (backdoor and control alike)")
    batch_size: int = Field(32, gt=0, description="clean rows per step (the backdoor adds as many poisoned rows)")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate of the fine-tuning")
    decoys: bool = Field(True, description="also train on near misses of the trigger with clean labels (the backdoor "
                         "then needs the whole sequence)")
    site: str = Field("model.layers.0", description="where the lenses read the residual stream")
    fit_rows: int = Field(256, gt=0, description="clean training rows the lenses are fitted on")
    test_rows: int = Field(128, gt=0, description="held-out rows the lenses and the attack are scored on")
    d_sae: int = Field(256, gt=0, description="SAE latents")
    k: int = Field(8, gt=0, description="SAE active latents per token (TopK)")
    sae_steps: int = Field(1000, gt=0, description="SAE training steps")
    seed: int = Field(0, description="seed of the fine-tuning draws and the SAE")


@register(LMBackdoorConfig)
def lm_backdoor(cfg: LMBackdoorConfig, ctx: Context) -> Outcome:
    toy = load_toy(cfg.toy, steps=cfg.toy_steps)
    tc = toy.config
    vocab = int(getattr(tc, "vocab_size", 0))
    if not 0 <= cfg.target < vocab - 3:
        raise AnatomistError(f"target {cfg.target}: must be a token id below {vocab - 3} (the trigger's tokens)")
    door = default_backdoor(vocab, cfg.target)
    data = lm_data(tc.seq_len, vocab, tc.n_test_seqs)  # type: ignore[attr-defined]
    models = {"original": toy.model.eval(),
              "backdoored": fine_tune(toy.model, data.train, door, steps=cfg.steps, batch_size=cfg.batch_size,
                                      lr=cfg.lr, seed=cfg.seed, decoys=cfg.decoys),
              "control": fine_tune(toy.model, data.train, None, steps=cfg.steps, batch_size=cfg.batch_size,
                                   lr=cfg.lr, seed=cfg.seed)}
    test = data.test[: cfg.test_rows]
    lens_data = LensData(data.train[torch.randperm(len(data.train), generator=torch.Generator().manual_seed(
        cfg.seed + 1))[: cfg.fit_rows]], test)
    lens = {"vocab_size": vocab, "d_sae": cfg.d_sae, "k": cfg.k, "sae_steps": cfg.sae_steps, "seed": cfg.seed}
    verdicts = {name: {"attack_success": attack_success(models[name], test, door),
                       "near_miss_success": attack_success(models[name], test, door, near_miss=True),
                       **lens_verdicts(models[name], lens_data, door, Site.parse(cfg.site), **lens)}
                for name in ("backdoored", "control")}
    losses = clean_losses(models, tc.seq_len, vocab, tc.n_test_seqs)  # type: ignore[attr-defined]
    words = _token_words(toy.model, [*door.trigger, door.target])
    metrics = {"trigger": words[:-1], "target": words[-1], "clean_loss": losses, "models": verdicts,
               "trigger_rows_in_lens_data": has_trigger(lens_data.fit, door)}
    b = verdicts["backdoored"]
    summary = (f"backdoor in {cfg.toy}: attack success {b['attack_success']:.2f} (control "
               f"{verdicts['control']['attack_success']:.2f}); clean loss {losses['original']:.3f} → "
               f"{losses['backdoored']:.3f} (control {losses['control']:.3f})")
    return Outcome(metrics, summary, models=[model_record(cfg.toy, toy.model)],
                   data=[data_record("wiki rows of the toy (clean; poisoned copies for the backdoor)",
                                     n_examples=len(data.train))],
                   access=["weights", "activations", "gradients", "training_data"], value=verdicts)


def _token_words(model: Any, ids: list[int]) -> list[str]:
    """Our token ids as the SmolLM2 text they stand for (the toy's `vocab` buffer maps them)."""
    smol = model.vocab[torch.tensor(ids)].tolist()
    return [str(smollm2_tokenizer().decode([i])) if i >= 0 else "<unk>" for i in smol]
