"""Run kind `autointerp`: explain and score sampled features of dictionaries and of dense bases at one site.

The comparison of Cunningham et al. 2023: a sparse dictionary's features against the site's neurons, PCA, ICA and
random directions (`anatomist.features.bases`, scored on their positive side), each explained by a language model
and scored by simulation, detection and fuzzing (`anatomist.interpret.autointerp`), with a bootstrap interval per
dictionary and a judge-free keyword proxy with its correlation to the LLM scores.

The run folder gets `explanations.json` (every explained feature: explanation, keyword, scores), and each folder
named under `dashboards` gets an `explanations.json` of its dictionary, which its feature pages show. Every LLM
answer is cached as it arrives (`anatomist.interpret.llm`), so a killed run reruns in the same folder, asking
only what is missing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from scipy.stats import rankdata
from torch import Tensor

from anatomist.core.errors import AnatomistError
from anatomist.core.io import save_json
from anatomist.core.progress import TrainingLog
from anatomist.core.provenance import data_record, model_record
from anatomist.data import CORPUS_HELP, TEXT_FIELD_HELP, load_corpus
from anatomist.features import load_sae
from anatomist.features.base import SparseDictionary
from anatomist.features.bases import BASES, fit_basis
from anatomist.interpret.autointerp import (
    SCORERS,
    FeatureContexts,
    FeatureScores,
    bootstrap_interval,
    explain,
    feature_contexts,
    pearson,
    score_feature,
)
from anatomist.interpret.llm import CachedModel, LLMSpec, make_model
from anatomist.nets.assets import LoadedModel, load_model
from anatomist.nets.sites import Site
from anatomist.report.dashboard import INDEX, Source
from anatomist.report.feature_pages import EXPLANATIONS
from anatomist.report.sources import harvested_store
from anatomist.runs.base import Context, Outcome, RunConfig, register
from anatomist.runs.features import trained_rows

EXPLANATIONS_FORMAT = "anatomist-explanations/1"
Scorer = Literal["simulation", "detection", "fuzzing"]
ALL_SCORERS: list[Scorer] = ["simulation", "detection", "fuzzing"]


class AutointerpConfig(RunConfig):
    """Explain sampled features of dictionaries and dense bases with a language model; score by simulation,
    detection and fuzzing."""

    kind: Literal["autointerp"] = "autointerp"
    smoke: ClassVar[tuple[str, ...]] = ("n_seqs=6", "seq_len=24", "skip_seqs=0", "dictionaries={pca: pca}",
                                        "n_features=1", "n_explain=2", "n_score=2", "basis_rows=100",
                                        "scorers=[simulation]", "explain_tokens=4", "min_active=2", "cache=null")
    model: str = Field("smollm2", description="model whose site the dictionaries read")
    site: str = Field("model.layers.6", description="the site, e.g. model.layers.6")
    dictionaries: dict[str, str] = Field(
        default_factory=lambda: {str(b): str(b) for b in BASES},
        description="name -> a dictionary folder (anatomist, SAELens or sparsify) or a basis fitted here: neurons, "
                    "pca, ica or random (every direction of the site; scored on its positive side)")
    corpus: str = Field("wiki", description=CORPUS_HELP)
    text_field: str = Field("text", description=TEXT_FIELD_HELP)
    n_seqs: int = Field(128, gt=0, description="sequences whose activations the contexts come from")
    seq_len: int = Field(64, gt=1, description="tokens per sequence (BOS included, left out of the rows)")
    skip_seqs: int | None = Field(None, ge=0, description="leave out the corpus' first sequences; null: those any "
                                  "listed dictionary's sae-train run trained on")
    block_seqs: int = Field(32, gt=0, description="sequences per harvested activation block")
    basis_rows: int = Field(8192, gt=0, description="activation rows the bases are fitted on (ICA needs more rows "
                                                    "than the site is wide)")
    ica_directions: int = Field(128, gt=0, description="directions ICA finds (in the span of as many principal "
                                "directions); the other bases take every direction of the site")
    n_features: int = Field(25, gt=0, description="features sampled per dictionary (seeded) among those active on "
                                                  "at least min_active tokens")
    min_active: int = Field(20, gt=0, description="tokens a feature must be positive on to be sampled")
    n_explain: int = Field(10, gt=0, description="top contexts the explainer sees")
    n_score: int = Field(5, gt=0, description="contexts of each scoring kind: held-out top and random (simulation), "
                                              "active across quantiles and quiet (detection, fuzzing)")
    before: int = Field(12, ge=0, description="tokens of a context before its centre")
    after: int = Field(4, ge=0, description="tokens of a context after its centre")
    explainer: LLMSpec = Field(LLMSpec.parse({}), description="the model that writes explanations")
    judge: LLMSpec | None = Field(None, description="the model that simulates and judges (null: the explainer)")
    explain_tokens: int = Field(40, gt=0, description="most tokens of an explanation reply")
    scorers: list[Scorer] = Field(default_factory=lambda: list(ALL_SCORERS), description="scores to compute: "
                                  "simulation, detection, fuzzing (the keyword proxy is always computed)")
    cache: str | None = Field("auto", description="LLM answers cache: auto ($ANATOMIST_CACHE/llm/responses.jsonl), "
                                                  "a .jsonl path, or null (memory only)")
    activation_cache: str | None = Field("auto", description="activation cache: auto, a folder, or null")
    dashboards: dict[str, str] = Field(default_factory=dict, description="dictionary name -> a dashboard folder "
                                       "(with dashboard.json) that gets this dictionary's explanations.json")
    n_boot: int = Field(1000, gt=0, description="bootstrap resamples of the per-dictionary means")
    seed: int = Field(0, description="seed of feature sampling, context sampling and the bootstrap")


# ---------------------------------------------------------------------------------------------------------
# activations


def _tokens(cfg: AutointerpConfig, loaded: LoadedModel) -> tuple[Tensor, int]:
    """Token ids [n_seqs, seq_len] after the skipped sequences, and how many were skipped."""
    skip = cfg.skip_seqs
    if skip is None:  # held out from every listed dictionary's training run, where known
        bos = getattr(loaded.tokenizer, "bos_token_id", None) is not None
        skip = max([trained_rows(p, cfg.corpus, cfg.seq_len, bos) or 0 for p in cfg.dictionaries.values()
                    if p not in BASES] or [0])
    ids = load_corpus(cfg.corpus, cfg.text_field).tokenize(loaded.tokenizer, cfg.seq_len, skip + cfg.n_seqs)[skip:]
    if len(ids) < cfg.n_seqs:
        raise AnatomistError(f"corpus '{cfg.corpus}' holds {len(ids) + skip} sequences of {cfg.seq_len} tokens; "
                             f"skip_seqs {skip} + n_seqs {cfg.n_seqs} need more")
    return ids, skip


def site_rows(cfg: AutointerpConfig, loaded: LoadedModel, ids: Tensor) -> Tensor:
    """The site's activations [n_seqs, seq_len - 1, d] (BOS left out), from the activation cache."""
    store = harvested_store(loaded.model, ids, Site.parse(cfg.site), model_name=cfg.model,
                            block_seqs=cfg.block_seqs, cache=cfg.activation_cache)
    site = store.sites[0]
    rows = torch.cat([store.block(i)[site].float() for i in range(store.n_blocks)])
    if len(rows) != len(ids) * (ids.shape[1] - 1):
        raise AnatomistError(f"site {cfg.site}: {len(rows)} activation rows for {len(ids)} sequences of "
                             f"{ids.shape[1]} tokens; expected one row per token after BOS")
    return rows.view(len(ids), ids.shape[1] - 1, -1)


def dictionary(spec: str, rows: Tensor, cfg: AutointerpConfig) -> SparseDictionary:
    """A saved dictionary, or a basis fitted on `basis_rows` rows drawn (seeded) from `rows` [n, d]."""
    if spec in BASES:
        pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.basis_rows]
        # PCA and ICA find at most one direction fewer than the rows they see; ICA is capped (its cost grows with
        # the square of the directions: FastICA of all 576 directions of SmolLM2 takes hours on one core)
        cap = {"pca": len(pick) - 1, "ica": min(len(pick) - 1, cfg.ica_directions)}.get(spec, rows.shape[1])
        n = min(rows.shape[1], cap)
        return fit_basis(spec, rows[pick], n, seed=cfg.seed)  # type: ignore[arg-type]
    sae = load_sae(spec)
    if sae.cfg.d_in != rows.shape[1]:
        raise AnatomistError(f"{spec}: dictionary reads width {sae.cfg.d_in}; site {cfg.site} has {rows.shape[1]}")
    return sae


CHUNK = 2048  # rows encoded at once


@torch.no_grad()
def sample_features(sae: SparseDictionary, rows: Tensor, cfg: AutointerpConfig) -> tuple[list[int], int, Tensor]:
    """(sampled latents, how many were eligible, the positive part of their activations [k, n_rows]):
    `n_features` latents drawn (seeded) among those positive on at least `min_active` rows."""
    counts = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    for s in range(0, len(rows), CHUNK):
        counts += (sae.encode(rows[s : s + CHUNK]) > 0).sum(0)
    eligible = torch.nonzero(counts >= cfg.min_active).flatten().numpy()
    rng = np.random.default_rng(cfg.seed)
    chosen = sorted(int(i) for i in rng.choice(eligible, size=min(cfg.n_features, len(eligible)), replace=False))
    acts = torch.cat([sae.encode(rows[s : s + CHUNK])[:, chosen].clamp_min(0) for s in range(0, len(rows), CHUNK)])
    return chosen, len(eligible), acts.T


# ---------------------------------------------------------------------------------------------------------
# explaining and scoring


Shower = Callable[[list[int]], list[str]]  # token ids of a window -> the text each token shows


def _shower(ids: Tensor, tokenizer: Any) -> Shower:
    """Token ids -> the text each shows (a multi-byte character shown once, where it completes)."""
    positions = torch.stack(torch.meshgrid(torch.arange(ids.shape[0]), torch.arange(ids.shape[1]), indexing="ij"),
                            -1).view(-1, 2)
    special = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}

    def decode(window: list[int]) -> str:  # a special token (a document's end) as plain text a prompt cannot misread
        return "".join(" [END] " if i in special else str(tokenizer.decode([i])) for i in window) if any(
            i in special for i in window) else str(tokenizer.decode(window))

    src = Source(tokens=ids, positions=positions, decode=decode)
    return lambda window: src.context_text(window) or [src.name(i) for i in window]


def explain_and_score(name: str, fcs: list[FeatureContexts], explainer: CachedModel | None,
                      judge: CachedModel | None, cfg: AutointerpConfig, log: TrainingLog,
                      done: int) -> list[FeatureScores]:
    """Explanations of every feature of one dictionary (batched), then each feature's scores, logged as they come.
    Without an explainer: no explanation, and only the judge-free keyword proxy."""
    explanations = explain(explainer, fcs, cfg.explain_tokens) if explainer is not None else [""] * len(fcs)
    out = []
    for k, (fc, text) in enumerate(zip(fcs, explanations, strict=True)):
        scored = score_feature(text, judge, fc, cfg.scorers, seed=cfg.seed + fc.feature)
        out.append(scored)
        log.step(done + k + 1, {"dictionary": name, "latent": fc.feature, **_rounded(scored.scores)})
    return out


def dictionary_features(name: str, sae: SparseDictionary, flat: Tensor, text: tuple[np.ndarray, Shower],
                        models: tuple[CachedModel | None, CachedModel | None], cfg: AutointerpConfig,
                        log: TrainingLog, done: int) -> tuple[list[FeatureScores], int]:
    """One dictionary's sampled features explained and scored from its activations `flat` [n_seqs·(L−1), d] on the
    token ids `text[0]` [n_seqs, L−1] (shown by `text[1]`); models: (explainer, judge), None for the keyword proxy
    alone. Returns the scored features and how many latents were eligible."""
    body, show = text
    chosen, eligible, acts = sample_features(sae, flat, cfg)
    fcs = [feature_contexts(f, body, a.view(body.shape).numpy(), show, n_explain=cfg.n_explain,
                            n_score=cfg.n_score, before=cfg.before, after=cfg.after, seed=cfg.seed + f)
           for f, a in zip(chosen, acts, strict=True)]
    return explain_and_score(name, fcs, models[0], models[1], cfg, log, done), eligible


def interpretability(cfg: AutointerpConfig, loaded: LoadedModel, saes: dict[str, tuple[SparseDictionary, str]],
                     out: Path, models: tuple[CachedModel | None, CachedModel | None] = (None, None),
                     ) -> dict[str, dict[str, Any]]:
    """This run's pipeline for dictionaries already in memory, each with the site it reads: per dictionary the
    means (and bootstrap intervals) of the keyword proxy and of the LLM scores `cfg.scorers` asks for (those only
    with an explainer and a judge in `models`). What `anatomist run compare` puts in its interpretability column."""
    ids, _ = _tokens(cfg, loaded)
    text = (ids[:, 1:].numpy(), _shower(ids[:, 1:], loaded.tokenizer))
    log = TrainingLog(out, "interpretability features", cfg.n_features * len(saes))
    names = ["keyword", *(_score_names(cfg) if models[1] is not None else [])]
    table: dict[str, dict[str, Any]] = {}
    done = 0
    for name, (sae, site) in saes.items():
        rows = site_rows(cfg.model_copy(update={"site": site}), loaded, ids)
        scored, eligible = dictionary_features(name, sae, rows.reshape(-1, rows.shape[-1]), text, models, cfg, log,
                                               done)
        done += len(scored)
        table[name] = {"eligible": eligible, **dictionary_summary(scored, names, cfg)}
    return table


def _rounded(scores: dict[str, float]) -> dict[str, float | None]:
    return {k: (round(v, 4) if math.isfinite(v) else None) for k, v in scores.items()}


def dictionary_summary(scored: list[FeatureScores], names: list[str], cfg: AutointerpConfig) -> dict[str, Any]:
    """Per score: the mean over features and its bootstrap 95% interval (`_lo`, `_hi`)."""
    row: dict[str, Any] = {"n_features": len(scored)}
    for i, score in enumerate(names):
        mean, lo, hi = bootstrap_interval([s.scores.get(score, math.nan) for s in scored], cfg.n_boot, cfg.seed + i)
        row.update({score: mean, f"{score}_lo": lo, f"{score}_hi": hi})
    return row


def proxy_agreement(scored: list[FeatureScores], names: list[str]) -> dict[str, Any]:
    """Correlation (Pearson and Spearman) over all features of the keyword proxy with each LLM score."""
    out: dict[str, Any] = {}
    for score in names:
        pairs = np.array([(s.scores["keyword"], s.scores[score]) for s in scored
                          if math.isfinite(s.scores.get(score, math.nan)) and math.isfinite(s.scores["keyword"])])
        if len(pairs) < 3:
            continue
        out[f"keyword_vs_{score}"] = {"pearson": pearson(pairs[:, 0], pairs[:, 1]), "n": len(pairs),
                                      "spearman": pearson(rankdata(pairs[:, 0]), rankdata(pairs[:, 1]))}
    return out


def _latents(scored: list[FeatureScores]) -> dict[str, Any]:
    return {str(s.feature): {"explanation": s.explanation, "keyword": s.keyword, "scores": _rounded(s.scores)}
            for s in scored}


def write_explanations(path: Path, cfg: AutointerpConfig, ids: dict[str, str],
                       by_dict: dict[str, list[FeatureScores]]) -> None:
    save_json(path, {"format": EXPLANATIONS_FORMAT, "model": cfg.model, "site": cfg.site, **ids,
                     "dictionaries": {n: {"source": cfg.dictionaries[n], "latents": _latents(s)}
                                      for n, s in by_dict.items()}})


def _check_dashboards(cfg: AutointerpConfig) -> None:
    for name, folder in cfg.dashboards.items():
        if name not in cfg.dictionaries:
            raise AnatomistError(f"dashboards: '{name}' is not one of the dictionaries {sorted(cfg.dictionaries)}")
        if not (Path(folder) / INDEX).is_file():
            raise AnatomistError(f"dashboards.{name}: {Path(folder) / INDEX} not found (not a dashboard folder)")


@register(AutointerpConfig)
def autointerp(cfg: AutointerpConfig, ctx: Context) -> Outcome:
    _check_dashboards(cfg)
    loaded = load_model(cfg.model)
    if loaded.tokenizer is None:
        raise AnatomistError(f"model '{cfg.model}' has no tokenizer: autointerp reads text")
    explainer = make_model(cfg.explainer, cfg.cache)
    judge = explainer if cfg.judge is None or cfg.judge == cfg.explainer else make_model(cfg.judge, cfg.cache)
    ids, skip = _tokens(cfg, loaded)
    rows = site_rows(cfg, loaded, ids)
    flat = rows.reshape(-1, rows.shape[-1])
    body = ids[:, 1:].numpy()
    show = _shower(ids[:, 1:], loaded.tokenizer)
    log = TrainingLog(ctx.out, "autointerp features", cfg.n_features * len(cfg.dictionaries))
    by_dict: dict[str, list[FeatureScores]] = {}
    table: dict[str, Any] = {}
    records = []
    for name, spec in cfg.dictionaries.items():
        sae = dictionary(spec, flat, cfg)
        records.append(model_record(f"dictionary {name} ({spec})", sae))
        by_dict[name], eligible = dictionary_features(name, sae, flat, (body, show), (explainer, judge), cfg, log,
                                                      sum(map(len, by_dict.values())))
        table[name] = {"source": spec, "latents": sae.cfg.d_sae, "eligible": eligible,
                       **dictionary_summary(by_dict[name], ["keyword", *_score_names(cfg)], cfg)}
    llm_ids = {"explainer": explainer.id, "judge": judge.id}
    write_explanations(ctx.out / EXPLANATIONS, cfg, llm_ids, by_dict)
    for name, folder in cfg.dashboards.items():
        write_explanations(Path(folder) / EXPLANATIONS, cfg, llm_ids, {name: by_dict[name]})
    every = [s for scored in by_dict.values() for s in scored]
    metrics = {"model": cfg.model, "site": cfg.site, "tokens": int(flat.shape[0]), "skip_seqs": skip, **llm_ids,
               "llm_answers_asked": explainer.asked + (judge.asked if judge is not explainer else 0),
               "dictionaries": table, "proxy": proxy_agreement(every, _score_names(cfg)),
               "features": {f"{n}/{s.feature}": {"dictionary": n, "latent": s.feature, "explanation": s.explanation,
                                                 "keyword": s.keyword, **_rounded(s.scores)}
                            for n, scored in by_dict.items() for s in scored}}
    return Outcome(metrics, _summary(cfg, table, explainer.id, judge.id),
                   models=[model_record(cfg.model, loaded.model), *records],
                   data=[data_record(f"{cfg.corpus} (sequences {skip}..{skip + len(ids)})", ids,
                                     n_tokens=int(flat.shape[0]))],
                   access=["activations"], value=by_dict)


def _score_names(cfg: AutointerpConfig) -> list[str]:
    """The LLM scores the chosen scorers give (detection and fuzzing also give the AUROC of P(Yes))."""
    extra = {"simulation": [], "detection": ["detection_auc"], "fuzzing": ["fuzzing_auc"]}
    return [n for s in SCORERS if s in cfg.scorers for n in [s, *extra[s]]]


def _summary(cfg: AutointerpConfig, table: dict[str, Any], explainer: str, judge: str) -> str:
    main = next((s for s in SCORERS if s in cfg.scorers), "keyword")
    parts = [f"{n} {row[main]:.2f} [{row[f'{main}_lo']:.2f}, {row[f'{main}_hi']:.2f}]" for n, row in table.items()
             if math.isfinite(row.get(main, math.nan))]
    return (f"autointerp of {cfg.n_features} features per dictionary on {cfg.model} {cfg.site} (explainer {explainer}, "
            f"judge {judge}): {main} " + ", ".join(parts))
