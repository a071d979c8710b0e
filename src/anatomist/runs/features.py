"""Run kinds `sae-train`, `sae-train-sites` and `sae-eval`, and the demo's SAE step.

- sae-train: train one sparse dictionary (SAE or transcoder; objectives local, e2e, e2e+ds) on a model's site.
  The run folder gets `sae/` (the dictionary), `checkpoints/`, the loss log `metrics.jsonl`, and the three
  files every run has. `--resume` continues from the newest checkpoint.
- sae-train-sites: one SAE per site (sparsify's hookpoints), each an `sae-train` run in `out/<site>`, fed by one
  shared activation cache that a single forward per batch fills for every site. Under torchrun the sites either
  train one after another, each data-parallel over all ranks, or (`distribute_sites`, sparsify's
  --distribute_modules) site i trains on rank i mod N by itself: no gradient traffic, N sites at once. Either
  way a site's SAE is the one `sae-train` would train on that site alone (same batches, same seed).
- sae-eval: reconstruction, sparsity and spliced-model losses of a saved dictionary on held-out corpus text:
  by default the rows after those its `sae-train` run trained on (when the dictionary sits in such a run's
  folder); the metrics say which rows were used.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from anatomist.core import distributed, resolve_device
from anatomist.core.config import read_yaml_mapping
from anatomist.core.errors import AnatomistError
from anatomist.core.io import load_json
from anatomist.core.metrics import METRICS
from anatomist.core.provenance import data_record, model_record
from anatomist.data import CORPUS_HELP, TEXT_FIELD_HELP, load_corpus, load_images
from anatomist.data.store import ActivationStore
from anatomist.evaluate import evaluate_dictionary
from anatomist.evaluate.vision import token_role_metrics
from anatomist.features import load_sae
from anatomist.features.train import (
    TrainConfig,
    TrainRecipe,
    cache_folder,
    harvested_store,
    load_data,
    split_held_out,
    store_args,
    train_sae,
    training_tokens,
)
from anatomist.nets.assets import LoadedModel, load_model
from anatomist.nets.sites import Site
from anatomist.nets.vision import is_vision_transformer, vision_layout
from anatomist.runs.base import CONFIG, Context, Outcome, RunConfig, register, run_or_continue


class SAETrainConfig(TrainConfig, RunConfig):
    """Train a sparse dictionary (SAE or transcoder) on a model's site; the folder's sae/ loads with load_sae."""

    kind: Literal["sae-train"] = "sae-train"
    smoke: ClassVar[tuple[str, ...]] = ("steps=3", "data.n_seqs=4", "data.eval_seqs=2", "data.block_seqs=2",
                                        "data.cache=null", "batch_size=64", "log_every=1", "eval_every=2",
                                        "checkpoint_every=2", "eval_ce_seqs=1")
    resumable_changes: ClassVar[frozenset[str]] = frozenset({"steps"})  # a resumed run may train for longer


def _words(m: dict[str, Any]) -> str:
    """The final metrics in words: FVU and L0, with the spliced loss when the model is a language model."""
    text = f"FVU {m['fvu']:.3g} at L0 {m['l0']:.3g}" if "fvu" in m else "no held-out rows evaluated"
    if "loss_recovered" in m:
        text += f", CE {m['ce_increase']:+.3g}, loss recovered {100 * m['loss_recovered']:.0f}%"
    return text


def _data_records(cfg: TrainRecipe, train: torch.Tensor, held_out: torch.Tensor) -> list[dict[str, Any]]:
    """The data actually used, named by where it came from and with the rows it took: the image set, the inputs
    file (token ids counted as tokens, other inputs as examples), else the corpus."""
    n = len(train)
    parts = {"train": (train, f"rows 0..{n}"), "held out": (held_out, f"rows {n}..{n + len(held_out)}")}
    if cfg.data.images is not None:  # one example per image, not pixels counted as tokens
        return [data_record(f"{cfg.data.images} images ({part}, shuffled with seed 0, {rows})", x, n_examples=len(x))
                for part, (x, rows) in parts.items()]
    if cfg.data.inputs is not None:
        source = f"inputs file {cfg.data.inputs}"
        if train.is_floating_point() or train.ndim != 2:  # model inputs (images, features), not token ids
            return [data_record(f"{source} ({part}, {rows})", x, n_examples=len(x))
                    for part, (x, rows) in parts.items()]
    else:
        source = f"{cfg.data.corpus} corpus"
        parts = {part: (x, rows.replace("rows", "sequences")) for part, (x, rows) in parts.items()}
    return [data_record(f"{source} ({part}, {rows})", x, n_tokens=training_tokens(cfg, x))
            for part, (x, rows) in parts.items()]


@register(SAETrainConfig, trains=True, data_parallel=True)
def train(cfg: SAETrainConfig, ctx: Context) -> Outcome:
    model, inputs = load_data(cfg)
    sae, metrics = train_sae(cfg, ctx.out, model, inputs, resume=ctx.resume)
    train_ids, eval_ids = split_held_out(cfg, inputs)
    # local training reads activations (the eval splices the SAE in: outputs); e2e backpropagates through the model
    access = ["activations", "outputs"] + (["gradients"] if cfg.end_to_end else [])
    summary = (f"{cfg.sae.arch} SAE ({cfg.sae.d_sae} latents, {cfg.objective}) on {cfg.model} {cfg.site}: "
               f"{_words(metrics)} after {cfg.steps} steps")
    return Outcome(metrics, summary, models=[model_record(cfg.model, model)],
                   data=_data_records(cfg, train_ids, eval_ids), access=access, value=sae)


class SAETrainSitesConfig(TrainRecipe, RunConfig):
    """Train one SAE per site from one shared harvest; over N ranks, data-parallel or one site per rank."""

    kind: Literal["sae-train-sites"] = "sae-train-sites"
    sites: list[str] = Field(min_length=1, description="sites to train an SAE on, e.g. [model.layers.4, "
                             "model.layers.8]; every one must have width sae.d_in")
    distribute_sites: bool = Field(False, description="under torchrun: site i trains on rank i mod N by itself "
                                   "(false: each site in turn, data-parallel over every rank)")
    # two sites: each is a run of its own that loads the model again
    smoke: ClassVar[tuple[str, ...]] = (*SAETrainConfig.smoke, "sites=[model.layers.1, model.layers.2]")

    @model_validator(mode="after")
    def _check_sites(self) -> SAETrainSitesConfig:
        if self.sae.d_out is not None:
            raise ValueError("sae.d_out is set: sae-train-sites trains SAEs; train a transcoder with sae-train")
        parsed = [Site.parse(s) for s in self.sites]
        if len(set(parsed)) != len(parsed):
            raise ValueError(f"sites: a site is listed twice in {self.sites}")
        return self

    def site_config(self, site: str, cache: Path | None) -> SAETrainConfig:
        """The `sae-train` run of one site: this recipe, that site, reading the shared cache."""
        recipe = self.model_dump(mode="json", include=set(TrainRecipe.model_fields))
        recipe["data"]["cache"] = None if cache is None else str(cache)
        return SAETrainConfig.model_validate({**recipe, "site": site})


def site_folder(out: Path, site: str) -> Path:
    """A site's run folder: `out/model.layers.6`, `out/model.layers.6.mlp_input` (no ':' in folder names)."""
    return out / str(Site.parse(site)).removesuffix(":output").replace(":", "_")


def shared_cache(cfg: SAETrainSitesConfig) -> Path | None:
    """The cache every site reads, harvested here with one forward per batch for all sites (rank 0 harvests);
    None when the run streams (then each site's run computes its own activations)."""
    if cfg.data.cache is None:
        return None
    model, inputs = load_data(cfg)
    train_ids, _ = split_held_out(cfg, inputs)
    sites = [Site.parse(s) for s in cfg.sites]
    args = store_args(cfg, resolve_device(cfg.device))
    folder = cache_folder(cfg, ActivationStore(model, train_ids, sites, **args), f"{len(sites)}sites")
    return harvested_store(model, train_ids, sites, folder, args).cache


@register(SAETrainSitesConfig, composite=True, data_parallel=True)
def train_sites(cfg: SAETrainSitesConfig, ctx: Context) -> Outcome:
    cache = shared_cache(cfg)
    mine = [s for i, s in enumerate(cfg.sites)
            if not cfg.distribute_sites or i % distributed.world_size() == distributed.rank()]
    with distributed.alone() if cfg.distribute_sites else nullcontext():
        for site in mine:
            run_or_continue(cfg.site_config(site, cache), site_folder(ctx.out, site))
    distributed.barrier()  # every site's run folder is written before rank 0 reads them
    numbers = {s: load_json(site_folder(ctx.out, s) / METRICS)["numbers"] for s in cfg.sites}
    table = {s: {k: n.get(k) for k in ("fvu", "l0", "ce_increase", "loss_recovered", "dead_fraction")}
             for s, n in numbers.items()}
    summary = f"{cfg.sae.arch} SAEs on {len(cfg.sites)} sites of {cfg.model}: " + "; ".join(
        f"{s}: {_words(n)}" for s, n in numbers.items())
    return Outcome({"sites": table, "n_sites": len(cfg.sites), "shared_cache": str(cache) if cache else "none"},
                   summary)


class SAEEvalConfig(RunConfig):
    """Evaluate a saved dictionary (anatomist, SAELens or sparsify folder) spliced into a language model or an image
    model (`images`)."""

    kind: Literal["sae-eval"] = "sae-eval"
    path: str = Field(description="a dictionary folder (anatomist, SAELens or sparsify format)")
    model: str = Field(description="model name (smollm2, a local HF folder, ...)")
    site: str = Field(description="site the dictionary reads, e.g. model.layers.6")
    target_site: str | None = Field(None, description="transcoder: site it predicts")
    corpus: str = Field("wiki", description=CORPUS_HELP)
    text_field: str = Field("text", description=TEXT_FIELD_HELP)
    n_seqs: int = Field(16, gt=0, description="sequences evaluated")
    seq_len: int = Field(128, gt=1, description="tokens per sequence")
    skip_seqs: int | None = Field(None, ge=0, description="leave out the corpus' first sequences; null: those the "
                                  "dictionary's sae-train run trained on (its folder's parent), else none")
    spliced_seqs: int | None = Field(None, ge=0, description="sequences spliced for CE/KL (null: all)")
    images: str | None = Field(None, description="an image set (mnist, digits, or a folder) used instead of the "
                               "corpus: its last n_seqs images in seed-0 shuffled order (the held-out images of an "
                               "sae-train run on that set with eval_seqs >= n_seqs); CE, KL and accuracy against "
                               "the labels, and on a vision transformer the metrics per token role (by_role)")
    batch_size: int = Field(8, gt=0, description="sequences per forward")
    device: str = Field("cpu", description="cpu, cuda or auto")


def trained_rows(dictionary: str, corpus: str, seq_len: int, bos: bool) -> int | None:
    """How many of `corpus`'s first rows of `seq_len` tokens overlap what the dictionary at `dictionary` trained
    on, when it sits in an `sae-train` run folder (`RUN/sae`); None when its training data is unknown.

    Rows are packed from one token stream (BOS, then `seq_len - 1` stream tokens each), so training rows of
    another length cover ceil(n · body_trained / body) rows of this one.
    """
    path = Path(dictionary).parent / CONFIG
    if not path.is_file():
        return None
    raw = read_yaml_mapping(path)
    if raw.get("kind") != "sae-train":
        return None
    trained = SAETrainConfig.parse(raw, source=str(path)).data
    if trained.inputs is not None or trained.images is not None or trained.corpus != corpus:
        return 0  # it trained on other data: every row of this corpus is held out
    b = int(bos)
    return math.ceil(trained.n_seqs * (trained.seq_len - b) / (seq_len - b))


def rows_used(skip: int, n: int, trained: int | None) -> str:
    """Which corpus rows were evaluated, and whether the dictionary saw them in training, in words."""
    rows = f"sequences {skip}..{skip + n}"
    if trained is None:
        return f"{rows} (the dictionary's training data is unknown)"
    seen = max(0, min(trained, skip + n) - skip)
    if seen:
        return f"{rows}, {seen} of them seen in training (its run trained on sequences 0..{trained})"
    return f"held out: {rows}"


def _evaluate_on_images(cfg: SAEEvalConfig, sae: Any, loaded: LoadedModel) -> Outcome:
    """sae-eval on the last `n_seqs` images of an image set: CE/KL/accuracy spliced, per token role on a ViT."""
    data = load_images(cfg.images or "").shuffled(seed=0)
    images, labels = data.images[-cfg.n_seqs :], data.labels[-cfg.n_seqs :]
    labelled = not bool((labels < 0).any())
    metrics = evaluate_dictionary(sae, loaded.model, images, cfg.site, target_site=cfg.target_site,
                                  labels=labels if labelled else None, batch_size=cfg.batch_size,
                                  spliced=labelled, spliced_seqs=cfg.spliced_seqs)
    if is_vision_transformer(loaded.model):
        metrics["by_role"] = token_role_metrics(sae, loaded.model, images.to(loaded.device), cfg.site,
                                                vision_layout(loaded.model), target_site=cfg.target_site,
                                                batch_size=cfg.batch_size)
    rows = f"the last {len(images)} of {len(data)} images (seed-0 shuffled order)"
    metrics = {**metrics, "rows": rows}
    summary = f"{sae.arch} dictionary {Path(cfg.path).name} on {cfg.model} {cfg.site}: {_words(metrics)} ({rows})"
    if "accuracy_clean" in metrics:
        summary += f", accuracy {metrics['accuracy_clean']:.3f} -> {metrics['accuracy_spliced']:.3f} spliced"
    return Outcome(metrics, summary, models=[model_record(cfg.model, loaded.model)],
                   data=[data_record(f"{cfg.images} images ({rows})", images, n_examples=len(images))],
                   access=["activations", "outputs"], value=metrics)


@register(SAEEvalConfig)
def evaluate(cfg: SAEEvalConfig, ctx: Context) -> Outcome:
    sae = load_sae(cfg.path, device=cfg.device)
    loaded = load_model(cfg.model, device=cfg.device)
    if cfg.images is not None:
        return _evaluate_on_images(cfg, sae, loaded)
    if loaded.tokenizer is None:
        raise AnatomistError(f"model '{cfg.model}' has no tokenizer: sae-eval runs language models on a corpus")
    trained = trained_rows(cfg.path, cfg.corpus, cfg.seq_len, loaded.tokenizer.bos_token_id is not None)
    skip = cfg.skip_seqs if cfg.skip_seqs is not None else trained or 0
    ids = load_corpus(cfg.corpus, cfg.text_field).tokenize(loaded.tokenizer, cfg.seq_len, skip + cfg.n_seqs)[skip:]
    metrics = evaluate_dictionary(sae, loaded.model, ids, cfg.site, target_site=cfg.target_site,
                                  batch_size=cfg.batch_size, spliced_seqs=cfg.spliced_seqs)
    rows = rows_used(skip, len(ids), trained)
    metrics = {**metrics, "rows": rows, "skip_seqs": skip}
    summary = f"{sae.arch} dictionary {Path(cfg.path).name} on {cfg.model} {cfg.site}: {_words(metrics)} ({rows})"
    data = [data_record(f"{cfg.corpus} ({rows})", ids, n_tokens=int(ids.numel()))]
    return Outcome(metrics, summary, models=[model_record(cfg.model, loaded.model)], data=data,
                   access=["activations", "outputs"], value=metrics)
