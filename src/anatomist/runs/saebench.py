"""Run kinds `sparse-probing` and `absorption`: SAEBench's two probing evaluations of a dictionary on a language
model (methods in `anatomist.interpret.probing` and `anatomist.interpret.absorption`).

- sparse-probing: token-level tasks from corpus text the dictionary did not train on (by default the rows after
  those its `sae-train` run used); k-sparse probe accuracy per task and k for the dictionary and the dense
  baselines (fitted on the same rows, unsupervised), and a probe on the raw activations as the ceiling.
- absorption: first-letter absorption rate and absorption fraction per letter, over single-token words of the
  vocabulary read after a short prompt.
"""

from __future__ import annotations

from functools import cache
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from anatomist.core.errors import AnatomistError
from anatomist.core.provenance import data_record, model_record
from anatomist.data import CORPUS_HELP, TEXT_FIELD_HELP, load_corpus
from anatomist.features import SparseDictionary
from anatomist.features.bases import Basis
from anatomist.interpret.absorption import (
    PROMPT,
    AbsorptionResult,
    Thresholds,
    absorption,
    first_letter_prompts,
    first_letters,
    single_token_words,
)
from anatomist.interpret.probing import KS, ProbingResult, sparse_probing, token_tasks
from anatomist.interpret.reading import basis_name, check_width, fit_baseline, open_dictionary, site_rows
from anatomist.nets.assets import LoadedModel, load_model
from anatomist.nets.sites import Site, capture
from anatomist.runs.base import Context, Outcome, RunConfig, register
from anatomist.runs.features import rows_used, trained_rows

ACCESS = ["activations"]


class DictionaryOnLM(RunConfig):
    """Fields every dictionary evaluation on a language model shares."""

    kind: str
    path: str = Field(description="a dictionary folder (anatomist, SAELens or sparsify format), or basis:NAME "
                      "(neurons, pca, ica, random: fitted on this run's activation rows)")
    model: str = Field("smollm2", description="causal language model (packaged name or local HF folder)")
    site: str | None = Field(None, description="site the dictionary reads; null: the one its metadata names")
    seed: int = Field(0, description="seed for sampling examples, splits and the random basis")
    device: str = Field("cpu", description="cpu, cuda or auto")


def _language_model(name: str, device: str) -> LoadedModel:
    loaded = load_model(name, device=device)
    if loaded.tokenizer is None:
        raise AnatomistError(f"model '{name}' has no tokenizer: the probing evaluations read text")
    return loaded


# --- sparse probing -------------------------------------------------------------------------------------------


class SparseProbingConfig(DictionaryOnLM):
    """k-sparse probing (SAEBench): accuracy of probes on the top-k latents per token task, vs neurons and PCA."""

    kind: Literal["sparse-probing"] = "sparse-probing"
    smoke: ClassVar[tuple[str, ...]] = ("path=basis:pca", "n_seqs=4", "seq_len=32", "n_per_class=20", "ks=[1, 2]",
                                        "baselines=[\"neurons\"]")
    corpus: str = Field("wiki", description=f"the tasks' text: {CORPUS_HELP}")
    text_field: str = Field("text", description=TEXT_FIELD_HELP)
    n_seqs: int = Field(128, gt=0, description="corpus rows read")
    seq_len: int = Field(128, gt=1, description="tokens per row")
    skip_seqs: int | None = Field(None, ge=0, description="leave out the corpus' first rows; null: those the "
                                  "dictionary's sae-train run trained on (none for a basis)")
    ks: tuple[int, ...] = Field(KS, min_length=1, description="numbers of latents probed")
    n_per_class: int = Field(500, gt=1, description="examples per class per task at most (balanced)")
    train_frac: float = Field(0.8, gt=0, lt=1, description="fraction of each task's examples used to train")
    baselines: tuple[Basis, ...] = Field(("neurons", "pca"), description="dense bases probed the same way")
    full: bool = Field(True, description="also probe every raw activation dimension (the ceiling)")
    batch_size: int = Field(8, gt=0, description="sequences per forward")


def _probing_metrics(result: ProbingResult, ks: tuple[int, ...], names: list[str]) -> dict[str, Any]:
    means = {f"{d}.k{k}": result.mean(f"{d} k={k}") for d in names for k in ks}
    if any("full" in row for row in result.accuracy.values()):
        means["full"] = result.mean("full")
    return {"mean_accuracy": means, "accuracy": result.accuracy, "tasks": result.sizes}


def _probing_summary(cfg: SparseProbingConfig, result: ProbingResult, names: list[str]) -> str:
    k1, kmax = cfg.ks[0], cfg.ks[-1]
    parts = [f"{d} {result.mean(f'{d} k={k1}'):.3f}/{result.mean(f'{d} k={kmax}'):.3f}" for d in names]
    text = f"mean test accuracy over {len(result.accuracy)} tasks at k={k1}/k={kmax}: " + ", ".join(parts)
    return text + (f"; full probe {result.mean('full'):.3f}" if cfg.full else "")


@register(SparseProbingConfig)
def probe(cfg: SparseProbingConfig, ctx: Context) -> Outcome:
    loaded = _language_model(cfg.model, cfg.device)
    bos = getattr(loaded.tokenizer, "bos_token_id", None) is not None
    trained = None if basis_name(cfg.path) else trained_rows(cfg.path, cfg.corpus, cfg.seq_len, bos)
    skip = cfg.skip_seqs if cfg.skip_seqs is not None else trained or 0
    ids = load_corpus(cfg.corpus, cfg.text_field).tokenize(loaded.tokenizer, cfg.seq_len, skip + cfg.n_seqs)[skip:]

    @cache  # harvested once per site
    def rows(site: Site) -> torch.Tensor:
        return site_rows(loaded.model, ids, site, batch_size=cfg.batch_size, exclude_bos=bos)

    sae, site = open_dictionary(cfg.path, cfg.site, rows, seed=cfg.seed)
    check_width(sae, rows(site), site)
    name = basis_name(cfg.path) or "sae"
    dictionaries: dict[str, SparseDictionary] = {name: sae}
    dictionaries.update({b: fit_baseline(b, rows(site), cfg.seed) for b in cfg.baselines if b != name})
    tasks = token_tasks(ids, loaded.tokenizer, exclude_bos=bos)
    result = sparse_probing(rows(site), tasks, dictionaries, ks=cfg.ks, n_per_class=cfg.n_per_class,
                            train_frac=cfg.train_frac, seed=cfg.seed, full=cfg.full)
    if not result.accuracy:
        raise AnatomistError(f"no task has both classes in {len(ids)} rows of {cfg.corpus}: read more rows (n_seqs)")
    used = rows_used(skip, len(ids), trained)
    metrics = {"site": str(site), "rows": used, **_probing_metrics(result, cfg.ks, list(dictionaries))}
    data = [data_record(f"{cfg.corpus} ({used})", ids, n_tokens=int(ids.numel()))]
    return Outcome(metrics, _probing_summary(cfg, result, list(dictionaries)),
                   models=[model_record(cfg.model, loaded.model)], data=data, access=ACCESS, value=result)


# --- absorption -----------------------------------------------------------------------------------------------


class AbsorptionConfig(DictionaryOnLM):
    """Feature absorption (Chanin et al.; SAEBench) on the first-letter task: absorption rate per letter."""

    kind: Literal["absorption"] = "absorption"
    smoke: ClassVar[tuple[str, ...]] = ("path=basis:pca", "n_words=150", "max_k=3")
    n_words: int = Field(2000, gt=10, description="single-token words sampled from the vocabulary")
    test_frac: float = Field(0.3, gt=0, lt=1, description="fraction of words held out (probe and F1s measured "
                             "there, absorption scored there)")
    prompt: str = Field(PROMPT, description="text before each word (the word's activation is read)")
    max_k: int = Field(10, gt=0, description="most main latents per letter (k-sparse probing)")
    f1_jump: float = Field(0.03, ge=0, description="a letter gets one more main latent while F1 rises by more")
    cos_threshold: float = Field(0.025, description="full absorption: least cosine of the absorbing latent's "
                                 "decoder row with the probe")
    share_threshold: float = Field(0.4, description="least share of the probe projection the absorbing latent(s) "
                                   "carry")
    fraction_cos_threshold: float = Field(0.1, description="absorption fraction: least cosine of an absorbing latent")
    max_absorbers: int = Field(3, gt=0, description="absorption fraction: most latents counted as absorbing")
    min_words: int = Field(5, gt=0, description="letters with fewer correctly probed test words are not averaged")
    batch_size: int = Field(64, gt=0, description="prompts per forward")


@torch.no_grad()
def _word_rows(loaded: LoadedModel, prompts: torch.Tensor, site: Site, batch: int) -> torch.Tensor:
    """The site's activation at each prompt's last position (the word) [n_words, d]."""
    return torch.cat([capture(loaded.model, prompts[i:i + batch].to(loaded.device), [site])[site][:, -1].float().cpu()
                      for i in range(0, len(prompts), batch)])


def _absorption_metrics(result: AbsorptionResult, min_words: int) -> dict[str, Any]:
    letters = {r.letter: {"words": r.words, "true_positives": r.true_positives, "main_latents": r.main_latents,
                          "absorption_rate": r.absorption_rate, "absorption_fraction": r.absorption_fraction,
                          "absorbed": ", ".join(r.absorbed_examples), "absorbers": r.top_absorbers}
               for r in result.letters}
    counted = [r for r in result.letters if r.true_positives >= min_words]
    return {"mean_absorption_rate": result.mean("absorption_rate", min_words),
            "mean_absorption_fraction": result.mean("absorption_fraction", min_words),
            "mean_main_latents": float(np.mean([len(r.main_latents) for r in counted])) if counted else None,
            "letters_counted": len(counted), "probe_accuracy": result.probe_accuracy, "letters": letters}


@register(AbsorptionConfig)
def absorb(cfg: AbsorptionConfig, ctx: Context) -> Outcome:
    loaded = _language_model(cfg.model, cfg.device)
    word_ids, words = single_token_words(loaded.tokenizer, cfg.n_words, cfg.seed)
    prompts = first_letter_prompts(loaded.tokenizer, word_ids, cfg.prompt)
    rows = cache(lambda site: _word_rows(loaded, prompts, site, cfg.batch_size))
    sae, site = open_dictionary(cfg.path, cfg.site, rows, cfg.seed)
    check_width(sae, rows(site), site)
    test = np.random.default_rng(cfg.seed).random(len(words)) < cfg.test_frac
    th = Thresholds(cfg.cos_threshold, cfg.share_threshold, cfg.fraction_cos_threshold, cfg.max_absorbers)
    result = absorption(rows(site), first_letters(words), sae.cpu(), test, words=words, max_k=cfg.max_k,
                        f1_jump=cfg.f1_jump, th=th, seed=cfg.seed)
    metrics = {"site": str(site), "words": len(words), "test_words": int(test.sum()),
               **_absorption_metrics(result, cfg.min_words)}
    summary = (f"first-letter absorption of {cfg.path} at {site}: rate {metrics['mean_absorption_rate']:.3f}, "
               f"fraction {metrics['mean_absorption_fraction']:.3f} over {metrics['letters_counted']} letters "
               f"(probe accuracy {result.probe_accuracy:.3f} on {int(test.sum())} held-out words)")
    data = [data_record(f"{len(words)} single-token words of the {cfg.model} vocabulary after the prompt "
                        f"{cfg.prompt!r}", prompts, n_examples=len(words))]
    return Outcome(metrics, summary, models=[model_record(cfg.model, loaded.model)], data=data, access=ACCESS,
                   value=result)
