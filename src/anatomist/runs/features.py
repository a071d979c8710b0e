"""Run kinds `sae-train` and `sae-eval`, and the demo's SAE step.

- sae-train: train one sparse dictionary (SAE or transcoder; objectives local, e2e, e2e+ds) on a model's site.
  The run folder gets `sae/` (the dictionary), `checkpoints/`, the loss log `metrics.jsonl`, and the three
  files every run has. `--resume` continues from the newest checkpoint.
- sae-eval: reconstruction, sparsity and spliced-model losses of a saved dictionary on held-out corpus text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from anatomist.core.errors import AnatomistError
from anatomist.core.provenance import data_record, model_record
from anatomist.data import load_corpus
from anatomist.evaluate import evaluate_dictionary
from anatomist.features import load_sae
from anatomist.features.train import TrainConfig, load_data, split_held_out, train_sae, training_tokens
from anatomist.nets.assets import load_model
from anatomist.runs.base import Context, Outcome, RunConfig, register


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
        text += f", CE +{m['ce_increase']:.3g}, loss recovered {100 * m['loss_recovered']:.0f}%"
    return text


def _data_records(cfg: TrainConfig, train: torch.Tensor, held_out: torch.Tensor) -> list[dict[str, Any]]:
    """The data actually used: the image set or inputs file when one is given, else the corpus."""
    if cfg.data.images is not None:  # one example per image, not pixels counted as tokens
        return [data_record(f"{cfg.data.images} images (train)", train, n_examples=len(train)),
                data_record(f"{cfg.data.images} images (held out)", held_out, n_examples=len(held_out))]
    name = cfg.data.inputs if cfg.data.inputs is not None else cfg.data.corpus
    return [data_record(f"{name} (train)", train, n_tokens=training_tokens(cfg, train)),
            data_record(f"{name} (held out)", held_out, n_tokens=int(held_out.numel()))]


@register(SAETrainConfig, trains=True)
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


class SAEEvalConfig(RunConfig):
    """Evaluate a saved dictionary (anatomist, SAELens or sparsify folder) spliced into a language model."""

    kind: Literal["sae-eval"] = "sae-eval"
    path: str = Field(description="a dictionary folder (anatomist, SAELens or sparsify format)")
    model: str = Field(description="model name (smollm2, a local HF folder, ...)")
    site: str = Field(description="site the dictionary reads, e.g. model.layers.6")
    target_site: str | None = Field(None, description="transcoder: site it predicts")
    corpus: str = Field("wiki", description="packaged corpus")
    n_seqs: int = Field(16, gt=0, description="sequences evaluated")
    seq_len: int = Field(128, gt=1, description="tokens per sequence")
    skip_seqs: int = Field(0, ge=0, description="leave out the corpus' first sequences (e.g. training data)")
    spliced_seqs: int | None = Field(None, ge=0, description="sequences spliced for CE/KL (null: all)")
    batch_size: int = Field(8, gt=0, description="sequences per forward")
    device: str = Field("cpu", description="cpu, cuda or auto")


@register(SAEEvalConfig)
def evaluate(cfg: SAEEvalConfig, ctx: Context) -> Outcome:
    sae = load_sae(cfg.path, device=cfg.device)
    loaded = load_model(cfg.model, device=cfg.device)
    if loaded.tokenizer is None:
        raise AnatomistError(f"model '{cfg.model}' has no tokenizer: sae-eval runs language models on a corpus")
    ids = load_corpus(cfg.corpus).tokenize(loaded.tokenizer, cfg.seq_len, cfg.skip_seqs + cfg.n_seqs)[cfg.skip_seqs:]
    metrics = evaluate_dictionary(sae, loaded.model, ids, cfg.site, target_site=cfg.target_site,
                                  batch_size=cfg.batch_size, spliced_seqs=cfg.spliced_seqs)
    summary = f"{sae.arch} dictionary {Path(cfg.path).name} on {cfg.model} {cfg.site}: {_words(metrics)}"
    data = [data_record(f"{cfg.corpus} (sequences {cfg.skip_seqs}..{cfg.skip_seqs + len(ids)})", ids,
                        n_tokens=int(ids.numel()))]
    return Outcome(metrics, summary, models=[model_record(cfg.model, loaded.model)], data=data,
                   access=["activations", "outputs"], value=metrics)
