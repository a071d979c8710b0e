"""Run kind `localise`: how few units of each dictionary carry a behaviour (Cunningham et al. 2023, section 5).

For a task of prompt pairs (IOI by default) and a site, every decomposition listed (a saved SAE or transcoder,
or a basis of the site fitted here: neurons, PCA, ICA, random directions) gets the curve of behaviour change
against the number of its units patched from the counterfactual run into the clean run (`interpret.patching`),
units ordered by attribution patching. The run writes each curve as a table, the units needed to reach 50% and 90%
of the change (of the logit difference and of the KL), and `localise.png`. Per decomposition it also patches whole
nodes: the site (every unit; the fraction a site that does not cut the model, like an MLP's output, can carry at
most: `units_50_of_site` counts against it), all features, all error nodes (how much goes through the error), and
every unit at the last token (whether the behaviour has reached the answer's position at this site).

Each finished decomposition's curve is saved under `curves/` (and each fitted basis under `bases/`), so `--resume`
continues an interrupted run where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator

from anatomist.core.config import Config
from anatomist.core.errors import AnatomistError
from anatomist.core.io import load_tensors, save_tensors
from anatomist.core.progress import TrainingLog
from anatomist.core.provenance import data_record, model_record
from anatomist.core.seed import seed_everything
from anatomist.data import CORPUS_HELP, TEXT_FIELD_HELP, load_corpus
from anatomist.features import load_sae, save_sae
from anatomist.features.base import SparseDictionary
from anatomist.features.bases import Basis, fit_basis
from anatomist.interpret.patching import (
    Curve,
    CurveSpec,
    Decomposition,
    ErrorNodes,
    agreement,
    localisation_curve,
)
from anatomist.interpret.reading import site_rows
from anatomist.interpret.tasks import IOI_TEMPLATES, IOITask, PairsTask, PromptPair, Task
from anatomist.nets.assets import LoadedModel, load_model
from anatomist.nets.sites import Site
from anatomist.runs.base import Context, Outcome, RunConfig, register
from anatomist.runs.plots.localise import plot_curves

TARGETS = (0.5, 0.9)


class IOISpec(Config):
    """The IOI task: "When Mary and John went to the store, John gave a drink to" -> " Mary"."""

    name: Literal["ioi"] = "ioi"
    n_prompts: int = Field(64, gt=0, description="prompt pairs")
    counterfactual: Literal["swap", "fresh"] = Field(
        "swap", description="swap: S2 names the indirect object (the answer flips); fresh: both names replaced")
    order: Literal["abba", "baba", "both"] = Field("both", description="name order (ABBA: indirect object first)")
    templates: list[str] | None = Field(None, description="sentences with {A}, {B} and {S}; null: the built-in 8")
    seed: int = Field(0, description="seed of the names drawn")
    bos: bool = Field(True, description="start each prompt with the tokenizer's BOS (as corpus rows do)")

    def build(self) -> Task:
        return IOITask(self.n_prompts, self.counterfactual, self.order, self.seed,
                       self.templates or IOI_TEMPLATES, bos=self.bos)

    def describe(self) -> str:
        return f"IOI ({self.counterfactual} counterfactual, {self.order} order)"


class PairsSpec(Config):
    """A user's task: a JSONL file of {clean, counterfactual, correct, wrong} records."""

    name: Literal["pairs"] = "pairs"
    file: str = Field(description="JSONL file, one record per line; answers with their leading space (' Paris')")
    bos: bool = Field(True, description="start each prompt with the tokenizer's BOS")

    def build(self) -> Task:
        return PairsTask.from_jsonl(self.file, self.bos)

    def describe(self) -> str:
        return f"prompt pairs from {self.file}"


class DecompositionSpec(Config):
    """One decomposition of a site: a saved dictionary (path) or a basis fitted here (basis)."""

    name: str | None = Field(None, description="label in tables and plots; null: the basis or the folder's name")
    path: str | None = Field(None, description="a saved SAE or transcoder folder (anatomist, SAELens, sparsify)")
    basis: Basis | None = Field(None, description="neurons, pca, ica or random: fitted on the site's activations")
    n_directions: int | None = Field(None, gt=0, description="basis directions (null: the site's width)")
    site: str | None = Field(None, description="site read (null: the dictionary's own, else the run's site)")
    target_site: str | None = Field(None, description="transcoder: the site it predicts (null: its own)")
    error_nodes: ErrorNodes | None = Field(None, description="this decomposition's error nodes (null: the run's)")

    @model_validator(mode="after")
    def _one_source(self) -> DecompositionSpec:
        if (self.path is None) == (self.basis is None):
            raise ValueError("give exactly one of 'path' (a saved dictionary) and 'basis' (neurons/pca/ica/random)")
        if self.n_directions is not None and self.basis is None:
            raise ValueError("'n_directions' is for bases; a saved dictionary has its own width")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.basis is not None:
            return self.basis
        folder = Path(str(self.path))
        return folder.parent.name if folder.name == "sae" else folder.name  # RUN/sae: the run's name


class BasisData(Config):
    """The activations bases are fitted on: corpus rows read at the basis's site (BOS positions left out)."""

    corpus: str = Field("wiki", description=CORPUS_HELP)
    text_field: str = Field("text", description=TEXT_FIELD_HELP)
    n_seqs: int = Field(64, gt=0, description="sequences read")
    seq_len: int = Field(128, gt=1, description="tokens per sequence")
    max_rows: int = Field(8192, gt=0, description="at most this many rows (a random subset), for ICA's sake")


class LocaliseConfig(RunConfig):
    """Feature patching: how few units of each dictionary carry a behaviour (IOI) from a counterfactual prompt."""

    kind: Literal["localise"] = "localise"
    model: str = Field("smollm2", description="packaged model name or a local Hugging Face folder")
    site: str = Field("model.layers.6", description="default site of every decomposition (e.g. a layer's output)")
    task: Annotated[IOISpec | PairsSpec, Field(discriminator="name")] = Field(
        IOISpec.parse({}), description="the behaviour: ioi, or pairs (a JSONL file)")
    decompositions: list[DecompositionSpec] = Field(
        default_factory=lambda: [DecompositionSpec.parse({"basis": b}) for b in ("neurons", "pca", "random")],
        min_length=1, description="the dictionaries compared: each a path or a basis")
    basis_data: BasisData = Field(BasisData.parse({}), description="what bases are fitted on")
    counts: list[int] | None = Field(None, description="units patched per prompt; null: 0, 1, 2, 4, ..., all")
    order: Literal["abs", "signed"] = Field(
        "abs", description="patch first the units of largest |attribution| (abs), or most towards the "
        "counterfactual first (signed)")
    exact_candidates: int = Field(0, ge=0, description="re-measure each prompt's top units by |attribution| "
                                  "one at a time with activation patching, and order those by the measured effect")
    attribute_kl: bool = Field(False, description="order by the attribution of KL(patched || counterfactual) "
                               "instead of the logit difference")
    error_nodes: ErrorNodes = Field(
        "unit", description="the error node at each position: a unit like the features (unit), never patched "
        "(never: the curve ends at the features' share), or always patched and not counted (always)")
    batch_size: int = Field(16, gt=0, description="prompt pairs per forward")
    seed: int = Field(0, description="seed of the bases (ICA, random) and of the rows they are fitted on")
    device: str = Field("cpu", description="cpu, cuda or auto")

    smoke: ClassVar[tuple[str, ...]] = (
        "task.n_prompts=2", "basis_data.n_seqs=2", "basis_data.seq_len=16", "counts=[0,1,8]",
        'decompositions=[{"basis":"neurons"},{"basis":"pca","n_directions":8}]')

    @model_validator(mode="before")
    @classmethod
    def _ioi_by_default(cls, data: Any) -> Any:
        """`--set task.n_prompts=8` on the defaults names no task: it means IOI's."""
        if isinstance(data, dict) and isinstance(data.get("task"), dict) and "name" not in data["task"]:
            return {**data, "task": {"name": "ioi", **data["task"]}}
        return data

    @model_validator(mode="after")
    def _distinct_labels(self) -> LocaliseConfig:
        labels = [d.label for d in self.decompositions]
        twice = sorted({x for x in labels if labels.count(x) > 1})
        if twice:
            raise ValueError(f"decompositions named twice: {twice}; give each a distinct 'name'")
        return self


# --- decompositions ----------------------------------------------------------------------------------------


def _site_rows(lm: LoadedModel, site: Site, data: BasisData, seed: int) -> torch.Tensor:
    """Activation rows [n, width] of `site` over corpus text, BOS positions left out, at most `max_rows`."""
    ids = load_corpus(data.corpus, data.text_field).tokenize(lm.tokenizer, data.seq_len, data.n_seqs)
    device = next(iter(lm.model.parameters())).device
    rows = site_rows(lm.model, ids.to(device), site).cpu()
    if len(rows) > data.max_rows:
        keep = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:data.max_rows]
        rows = rows[keep.sort().values]
    return rows.float()


def _basis(cfg: LocaliseConfig, spec: DecompositionSpec, lm: LoadedModel, ctx: Context,
           rows: dict[Site, torch.Tensor]) -> SparseDictionary:
    """The spec's basis, fitted on its site's rows (or the one a resumed run saved under bases/)."""
    folder = ctx.out / "bases" / spec.label
    if ctx.resume and folder.is_dir():
        return load_sae(folder, device=cfg.device)
    site = Site.parse(spec.site or cfg.site)
    if site not in rows:
        rows[site] = _site_rows(lm, site, cfg.basis_data, cfg.seed)
    assert spec.basis is not None
    basis = fit_basis(spec.basis, rows[site], spec.n_directions, seed=cfg.seed)
    save_sae(basis, folder, metadata={"model": cfg.model, "site": str(site)})
    return basis.to(cfg.device)


def decomposition(cfg: LocaliseConfig, spec: DecompositionSpec, lm: LoadedModel, ctx: Context,
                  rows: dict[Site, torch.Tensor]) -> Decomposition:
    """The spec's dictionary placed at its sites: the spec's, else the dictionary's own, else the run's."""
    if spec.basis is not None:
        return Decomposition.at(_basis(cfg, spec, lm, ctx, rows), spec.site or cfg.site, name=spec.label)
    path = Path(str(spec.path)).expanduser()
    if not path.exists():
        raise AnatomistError(f"decomposition '{spec.label}': no dictionary at {path}")
    sae = load_sae(path, device=cfg.device)
    site = spec.site or sae.metadata.get("site") or cfg.site
    target = spec.target_site or (sae.metadata.get("target_site") if sae.cfg.is_transcoder else None)
    return Decomposition.at(sae, site, target, name=spec.label)


# --- curves, kept between runs -------------------------------------------------------------------------------

_CURVE_TENSORS = ("clean", "counterfactual", "kl_clean", "metric", "kl", "n_units", "attribution", "effect")


def _part_key(cfg: LocaliseConfig, spec: DecompositionSpec) -> str:
    """What a saved curve depends on: a resumed run reuses it only under the same settings."""
    keys = ("model", "task", "basis_data", "counts", "order", "exact_candidates", "attribute_kl", "error_nodes",
            "seed", "site")
    relevant = {k: v for k, v in cfg.model_dump(mode="json").items() if k in keys}
    text = json.dumps({**relevant, "decomposition": spec.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_curve(curve: Curve, path: Path, key: str) -> None:
    tensors = {name: getattr(curve, name) for name in _CURVE_TENSORS}
    for name, (metric, kl) in curve.baselines.items():
        tensors[f"baseline.{name}.metric"], tensors[f"baseline.{name}.kl"] = metric, kl
    save_tensors(path, tensors, metadata={"name": curve.name, "counts": json.dumps(curve.counts), "key": key})


def load_curve(path: Path, key: str) -> Curve | None:
    """The curve saved at `path` if it was made under the settings `key`; None otherwise."""
    if not path.is_file():
        return None
    from safetensors import safe_open  # the metadata only; the tensors through load_tensors

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("key") != key:
        return None
    t = load_tensors(path)
    names = {k.split(".")[1] for k in t if k.startswith("baseline.")}
    baselines = {n: (t[f"baseline.{n}.metric"], t[f"baseline.{n}.kl"]) for n in sorted(names)}
    return Curve(meta["name"], json.loads(meta["counts"]), t["clean"], t["counterfactual"], t["kl_clean"],
                 t["metric"], t["kl"], t["n_units"], baselines, t["attribution"], t["effect"])


# --- the run -----------------------------------------------------------------------------------------------


def _summary_row(curve: Curve, dec: Decomposition, error_nodes: str) -> dict[str, Any]:
    row: dict[str, Any] = {"site": str(dec.read), "target_site": str(dec.write), "d_sae": dec.dictionary.cfg.d_sae,
                           "error_nodes": error_nodes}
    for target in TARGETS:
        pct = round(100 * target)
        row[f"units_{pct}"] = curve.units_to_reach(target)
        row[f"kl_units_{pct}"] = curve.units_to_reach(target, kl=True)
        row[f"units_{pct}_of_site"] = curve.units_to_reach(target, of_site=True)
    for name, (metric, kl) in curve.baselines.items():
        row[f"{name}_patched_fraction"] = curve.fraction(metric)
        row[f"{name}_patched_kl_fraction"] = curve.kl_fraction(kl)
    row["mean_units_per_prompt"] = float(curve.n_units.float().mean())
    row.update({f"attribution_{k}": v for k, v in agreement(curve.attribution, curve.effect).items()})
    return row


def _behaviour(curve: Curve) -> dict[str, Any]:
    return {"clean_logit_diff": float(curve.clean.mean()),
            "counterfactual_logit_diff": float(curve.counterfactual.mean()),
            "clean_correct_fraction": float((curve.clean > 0).float().mean()),
            "kl_clean_counterfactual": float(curve.kl_clean.mean())}


def _words(label: str, row: dict[str, Any]) -> str:
    def units(n: int | None) -> str:
        return "never" if n is None else str(n)

    return f"{label} {units(row['units_50'])}/{units(row['units_90'])}"


@register(LocaliseConfig, trains=True)
def localise(cfg: LocaliseConfig, ctx: Context) -> Outcome:
    seed_everything(cfg.seed)
    lm = load_model(cfg.model, device=cfg.device)
    if lm.tokenizer is None:
        raise AnatomistError(f"model '{cfg.model}' has no tokenizer: localise runs language models on prompts")
    task = cfg.task.build()
    pairs = task.make_pairs(lm.tokenizer)
    log = TrainingLog(ctx.out, "localise decomposition", total=len(cfg.decompositions))
    rows: dict[Site, torch.Tensor] = {}
    curves, table, decs = {}, {}, {}
    for n, dspec in enumerate(cfg.decompositions, start=1):
        dec = decomposition(cfg, dspec, lm, ctx, rows)
        spec = CurveSpec(cfg.counts, cfg.order, cfg.exact_candidates, cfg.batch_size, cfg.attribute_kl,
                         dspec.error_nodes or cfg.error_nodes)
        curve = _curve(cfg, dspec, dec, pairs, task, spec, lm, ctx)
        curves[dec.name], decs[dec.name] = curve, dec
        table[dec.name] = _summary_row(curve, dec, spec.error_nodes)
        log.step(n, {k: table[dec.name][k] for k in ("units_50", "units_90") if table[dec.name][k] is not None})
    first = next(iter(curves.values()))
    plot_curves(curves, ctx.out / "localise.png", f"{cfg.task.describe()} on {cfg.model}, {len(pairs)} pairs")
    metrics = {"task": cfg.task.describe(), "n_pairs": len(pairs), **_behaviour(first),
               "decompositions": table, "curves": {name: c.rows() for name, c in curves.items()},
               "plot": "localise.png"}
    summary = (f"{cfg.task.describe()} on {cfg.model} ({len(pairs)} pairs, logit diff {metrics['clean_logit_diff']:.2f}"
               f" clean, {metrics['counterfactual_logit_diff']:.2f} counterfactual); units to 50%/90% of the change: "
               + ", ".join(_words(name, row) for name, row in table.items()))
    return Outcome(metrics, summary, models=_model_records(cfg, lm, decs),
                   data=_data_records(cfg, pairs, lm), access=["activations", "outputs", "gradients"], value=curves)


def _curve(cfg: LocaliseConfig, dspec: DecompositionSpec, dec: Decomposition, pairs: list[PromptPair], task: Task,
           spec: CurveSpec, lm: LoadedModel, ctx: Context) -> Curve:
    """The decomposition's curve: the one a resumed run saved under the same settings, else computed and saved."""
    path, key = ctx.out / "curves" / f"{dec.name}.safetensors", _part_key(cfg, dspec)
    saved = load_curve(path, key) if ctx.resume else None
    if saved is not None:
        return saved
    curve = localisation_curve(lm.model, pairs, task, dec, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_curve(curve, path, key)
    return curve


def _model_records(cfg: LocaliseConfig, lm: LoadedModel, decs: dict[str, Decomposition]) -> list[dict[str, Any]]:
    records = [model_record(cfg.model, lm.model)]
    for spec in cfg.decompositions:
        where = spec.path if spec.path is not None else f"bases/{spec.label} ({spec.basis} basis fitted here)"
        records.append(model_record(f"{spec.label}: {where}", decs[spec.label].dictionary))
    return records


def _data_records(cfg: LocaliseConfig, pairs: list[PromptPair], lm: LoadedModel) -> list[dict[str, Any]]:
    ids = torch.cat([torch.cat([p.clean, p.counterfactual]) for p in pairs])
    records = [data_record(f"{cfg.task.describe()} prompt pairs", ids, n_examples=len(pairs))]
    if any(d.basis is not None for d in cfg.decompositions):
        b = cfg.basis_data
        tokens = load_corpus(b.corpus, b.text_field).tokenize(lm.tokenizer, b.seq_len, b.n_seqs)
        records.append(data_record(f"{b.corpus} corpus (first {b.n_seqs} sequences; bases fitted on at most "
                                   f"{b.max_rows} of their rows, BOS left out)", tokens, n_tokens=int(tokens.numel())))
    return records
