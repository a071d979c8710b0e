"""Run kinds of the dictionary reproductions (docs/reproductions.md), one YAML each in experiments/.

- `mdl-grid`: a grid of TopK SAEs (widths x k) trained on a packaged image set, each code priced in bits;
  the MDL choices with and without the dictionary's own bits, `mdl_frontier.png`, `mdl_atoms.png` and
  `results.md`. The SAEs stay in `<out>/<name>/sae`, where the `mdl`, `stitch` and `meta` kinds read them.
- `dictsci`: MDL selection, stitching (with the CE increase at the path's landmarks) and a meta-SAE over
  the SAEs a sweep trained (`<runs_dir>/<name>/sae`), scored on the sweep's cached training activations;
  writes `mdl_frontier.png`, `stitch_path.png` and `meta_examples.md`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import yaml
from pydantic import Field, model_validator

from anatomist.core import seed_everything
from anatomist.core.errors import AnatomistError
from anatomist.core.progress import TrainingLog
from anatomist.core.provenance import data_record, model_record
from anatomist.data import load_corpus, load_images
from anatomist.dictionaries import (
    MDL_RULES,
    MDLConfig,
    MetaConfig,
    MetaDecomposition,
    StitchConfig,
    decompose,
    description_length,
    fit_rows,
    match_latents,
    select_mdl,
    stage_dictionaries,
    stitch_path,
    train_meta_sae,
)
from anatomist.evaluate import evaluate_dictionary
from anatomist.features import SAEConfig, SparseDictionary, load_sae, make_sae, save_sae
from anatomist.nets.assets import load_model
from anatomist.runs.base import Context, Outcome, RunConfig, register
from anatomist.runs.dictionaries import load_rows
from anatomist.runs.plots.dictionaries import plot_atoms, plot_frontier, plot_stitch_paths

# --- mdl-grid -----------------------------------------------------------------------------------


class MDLGridConfig(RunConfig):
    """A grid of TopK SAEs (widths x k) on a packaged image set, each code priced in bits; the MDL choice."""

    kind: Literal["mdl-grid"] = "mdl-grid"
    images: str = Field("mnist", description="packaged image set whose flattened pixels the SAEs reconstruct")
    widths: list[int] = Field([16, 64, 256, 1024], min_length=1, description="latents of the grid's SAEs")
    ks: list[int] = Field([4, 8, 16, 32], min_length=1, description="active latents per input (k > width is skipped)")
    extra: list[tuple[int, int]] = Field(default_factory=list, description="(width, k) pairs beyond the grid")
    steps: int = Field(1500, gt=0, description="Adam steps of each SAE")
    batch_size: int = Field(256, gt=0, description="images per step")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    seed: int = Field(0, description="seed of every SAE")
    mdl: MDLConfig = Field(MDLConfig.parse({}), description="how each code is priced")

    # a 5-step SAE reconstructs with FVU near 1: the smoke tolerance lets one be chosen
    smoke: ClassVar[tuple[str, ...]] = ("steps=5", "widths=[16]", "ks=[4]", "extra=[]", "mdl.fvu_tolerance=2")

    def grid(self) -> list[tuple[int, int]]:
        return [(w, k) for w in self.widths for k in self.ks if k <= w] + list(self.extra)


def grid_sae(x: torch.Tensor, width: int, k: int, cfg: MDLGridConfig, folder: Path, reuse: bool) -> SparseDictionary:
    """One SAE of the grid: trained and saved in `folder`, or read back from it when resuming."""
    if reuse and folder.is_dir():
        return load_sae(folder)
    sae = fit_rows(x, SAEConfig.parse({"arch": "topk", "d_in": x.shape[1], "d_sae": width, "k": k}), steps=cfg.steps,
                   batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed)
    save_sae(sae, folder, metadata={"data": cfg.images, "steps": str(cfg.steps)})
    return sae


def results_table(results: list[dict[str, Any]], marked: str) -> str:
    """The grid as a Markdown table (the one in docs/reproductions.md); `marked` is the code-only MDL choice."""
    lines = ["| SAE | L0 | FVU | B | FVU quantised | firing bits | value bits | code bits | + dictionary | bound |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        mark = " (MDL)" if r["name"] == marked else ""
        lines.append(f"| {r['name']}{mark} | {r['l0']:.1f} | {r['fvu']:.3f} | {r['precision_bits']} | "
                     f"{r['fvu_quantised']:.3f} | {r['firing_bits_per_input']:.1f} | {r['value_bits_per_input']:.1f} | "
                     f"{r['code_bits_per_input']:.1f} | {r['bits_per_input']:.0f} | {r['bound_bits_per_input']:.0f} |")
    return "\n".join(lines) + "\n"


def shown_atoms(results: list[dict[str, Any]], best: int, code_only: int, saes: dict[str, SparseDictionary],
                x: torch.Tensor) -> dict[str, tuple[SparseDictionary, torch.Tensor]]:
    """Both MDL choices next to the narrowest and the widest SAE at the code-only choice's k, each once."""
    pick, pick_total = results[code_only], results[best]
    same_k = [r for r in results if r["k"] == pick["k"]]
    narrow, wide = min(same_k, key=lambda r: r["d_sae"]), max(same_k, key=lambda r: r["d_sae"])
    rows = {"narrowest": narrow, "MDL, code bits": pick, "MDL, + dictionary": pick_total, "widest": wide}
    shown, seen = {}, set()
    with torch.no_grad():
        for label, r in rows.items():
            if r["name"] in seen:  # e.g. the code-only choice is the widest SAE
                continue
            seen.add(r["name"])
            rate = (saes[r["name"]].encode(x) != 0).float().mean(0)  # [F]
            title = f"{label}: {r['name']} (code {r['code_bits_per_input']:.0f} bits, FVU {r['fvu']:.2f})"
            shown[title] = (saes[r["name"]], rate)
    return shown


@register(MDLGridConfig, trains=True)
def mdl_grid(cfg: MDLGridConfig, ctx: Context) -> Outcome:
    images = load_images(cfg.images).images
    x = images.flatten(1)  # [n, pixels]
    grid = {f"w{w}_k{k}": (w, k) for w, k in cfg.grid()}
    log = TrainingLog(ctx.out, "mdl-grid SAE", total=len(grid))  # a line per SAE: the grid takes minutes
    saes = {}
    for n, (name, (w, k)) in enumerate(grid.items(), start=1):
        saes[name] = grid_sae(x, w, k, cfg, ctx.out / name / "sae", ctx.resume)
        log.step(n, {"width": w, "k": k})
    results = [{"name": name, "k": k, **description_length(saes[name], x, cfg.mdl)} for name, (_, k) in grid.items()]
    names = list(grid)
    best, code_only = select_mdl(results, "code+dictionary"), select_mdl(results)
    plot_frontier(results, names, str(ctx.out / "mdl_frontier.png"),
                  title=f"TopK SAEs on {len(x):,} {cfg.images} images (FVU tolerance {cfg.mdl.fvu_tolerance})")
    plot_atoms(shown_atoms(results, best, code_only, saes, x), ctx.out / "mdl_atoms.png",
               (images.shape[-2], images.shape[-1]))
    (ctx.out / "results.md").write_text(results_table(results, names[code_only]))
    metrics = {"results": results, "mdl_choice": names[code_only], "mdl_choice_rule": MDL_RULES["code"][1],
               "mdl_choice_with_dictionary": names[best],
               "mdl_choice_with_dictionary_rule": MDL_RULES["code+dictionary"][1]}
    summary = (f"MDL choice of {len(results)} TopK SAEs on {cfg.images}: {names[code_only]} by code bits "
               f"({results[code_only]['code_bits_per_input']:.1f} bits per input), {names[best]} with the "
               f"dictionary ({results[best]['bits_per_input']:.0f} bits per input)")
    models = [model_record(str(ctx.out / name / "sae"), sae) for name, sae in saes.items()]
    data = [data_record(f"{cfg.images} images", x, n_examples=len(x))]
    return Outcome(metrics, summary, models=models, data=data, access=["training_data", "weights", "activations"],
                   value=metrics)


# --- dictsci ------------------------------------------------------------------------------------

Part = Literal["mdl", "seeds", "stitch", "meta"]  # they run in this order, whatever order `parts` lists


class DictsciStitch(StitchConfig):
    """Stitching along the widths: the pairs and how they are matched."""

    pairs: list[tuple[str, str]] = Field(default_factory=list, description="(smaller, larger) SAE names")


class DictsciMeta(MetaConfig):
    """The meta-SAE: which SAE it decomposes, how it is trained, and how many examples are written out."""

    base: str = Field(description="name of the SAE whose decoder rows the meta-SAE decomposes")
    context_rows: int = Field(8128, gt=0, description="activation rows searched for top-activating contexts")
    show: int = Field(4, ge=0, description="latents whose decomposition goes into meta_examples.md")


class DictsciConfig(RunConfig):
    """MDL selection, stitching and a meta-SAE over the SAEs of a sweep, on its cached training activations."""

    kind: Literal["dictsci"] = "dictsci"
    runs_dir: str = Field(description="the sweep's folder: <runs_dir>/<name>/sae for every SAE named here")
    cache: str = Field(description="activation cache folder of the sweep's training activations (~ allowed)")
    model: str = Field("smollm2", description="the model whose site the SAEs read (CE increase, contexts)")
    site: str = Field(description="the site the SAEs read")
    seq_len: int = Field(128, gt=1, description="the sweep's sequence length (cache row r: token 1 + r % "
                         "(seq_len - 1) of sequence r // (seq_len - 1), BOS excluded)")
    train_seqs: int = Field(gt=0, description="the sweep's training sequences (the held-out ones follow them)")
    rows: int = Field(gt=0, description="activation rows scored (the cache's first)")
    ce_seqs: int = Field(4, gt=0, description="held-out sequences for the CE increase")
    mdl: MDLConfig = Field(MDLConfig.parse({}), description="how each code is priced")
    mdl_runs: list[str] = Field(default_factory=list, description="the SAEs the MDL selection chooses among")
    stitch: DictsciStitch = Field(DictsciStitch.parse({}), description="stitching")
    meta: DictsciMeta | None = Field(None, description="the meta-SAE (needed by the meta part)")
    seed_pairs: list[tuple[str, str]] = Field(
        default_factory=list, description="seeds part: SAEs of one width and recipe, different seeds")
    parts: list[Part] = Field(["mdl", "stitch", "meta"], min_length=1, description="the analyses to run")

    # no smoke overrides: a run needs a sweep's SAEs and activation cache, which overrides cannot create
    # (tests/fake_sweep.py builds a tiny one)
    smoke: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _meta_given(self) -> DictsciConfig:
        if "meta" in self.parts and self.meta is None:
            raise ValueError("the meta part needs a 'meta' section (base, d_meta, ...)")
        return self


def context(tok: Any, ids: torch.Tensor, row: int, seq_len: int, before: int = 12) -> str:
    """The text around cache row `row` (BOS rows are not in the cache) with the token marked."""
    seq, pos = row // (seq_len - 1), 1 + row % (seq_len - 1)
    s = ids[seq]
    left = tok.decode(s[max(1, pos - before) : pos].tolist())
    return f"{left}[[{tok.decode([int(s[pos])])}]]{tok.decode(s[pos + 1 : pos + 3].tolist())}".replace("\n", " ")


def init_cosine(sae: SparseDictionary, run: Path) -> float:
    """Mean cosine of each trained decoder row with its initial value (sae-train seeds, then builds the SAE).

    Near 0 for a row that has moved far from its random start; rows still near their start make decoder-cosine
    matching between SAEs of one seed re-find the shared initialisation.
    """
    seed_everything(int(yaml.safe_load((run / "config.yaml").read_text())["seed"]))
    w0, w = make_sae(sae.cfg).W_dec.detach().float(), sae.W_dec.detach().float()  # [F, d] each
    return float(torch.nn.functional.cosine_similarity(w0, w, dim=-1).mean())


def _pair_names(pairs: list[tuple[str, str]]) -> list[str]:
    return sorted({n for pair in pairs for n in pair})


def mdl_part(cfg: DictsciConfig, saes: dict[str, SparseDictionary], x: torch.Tensor, out: Path) -> dict[str, Any]:
    """MDL selection over the sweep."""
    results = [{"name": n, **description_length(saes[n], x, cfg.mdl)} for n in cfg.mdl_runs]
    plot_frontier(results, cfg.mdl_runs, str(out / "mdl_frontier.png"),
                  title=f"TopK SAEs, {cfg.model} {cfg.site} (FVU tolerance {cfg.mdl.fvu_tolerance})")
    return {"results": results, "choice": results[select_mdl(results)]["name"],
            "choice_with_dictionary": results[select_mdl(results, "code+dictionary")]["name"]}


def seeds_part(cfg: DictsciConfig, saes: dict[str, SparseDictionary]) -> dict[str, Any]:
    """Control for stitching: what two SAEs of one width and recipe (different seeds) share at the threshold
    is what the recipe reproduces at all, the ceiling for latents shared across widths."""
    return {f"{a} vs {b}": match_latents(saes[a], saes[b], cfg.stitch.threshold).summary(saes[b].cfg.d_sae)
            for a, b in cfg.seed_pairs}


def stitch_part(cfg: DictsciConfig, saes: dict[str, SparseDictionary], x: torch.Tensor, model: torch.nn.Module,
                held_out: torch.Tensor, out: Path) -> dict[str, Any]:
    """Stitching along the widths; CE increase at the path's landmarks on held-out sequences."""
    results = {}
    for small_name, large_name in cfg.stitch.pairs:
        small, large = saes[small_name], saes[large_name]
        r = stitch_path(small, large, x, cfg.stitch)
        stages = stage_dictionaries(small, large, match_latents(small, large, cfg.stitch.threshold))
        r["ce_increase"] = {n: evaluate_dictionary(d, model, held_out, cfg.site)["ce_increase"]
                            for n, d in stages.items()}
        results[f"{small_name} -> {large_name}"] = r
    plot_stitch_paths({name: r["path"] for name, r in results.items()}, out / "stitch_path.png",
                      title=f"{cfg.model} {cfg.site}: small SAE -> large SAE")
    return results


def shown_latents(dec: MetaDecomposition, acts: torch.Tensor, show: int) -> list[int]:
    """The most frequent non-dense latents (firing on < 2% of tokens) that use 3+ meta-latents."""
    rate = (acts != 0).float().mean(0)  # [F]
    n_meta = (dec.codes != 0).sum(-1)  # [F]
    candidates = ((rate < 0.02) & (n_meta >= 3)).nonzero().flatten()
    return candidates[rate[candidates].argsort(descending=True)][:show].tolist()


def meta_examples(cfg: DictsciMeta, dec: MetaDecomposition, summary: dict[str, Any], acts: torch.Tensor,
                  top_text: Any) -> tuple[dict[str, Any], str]:
    """A few decompositions (as tables) and meta_examples.md, which shows them with top-activating contexts."""
    rate = (acts != 0).float().mean(0)  # [F]
    lines, examples = [f"meta-SAE on {cfg.base}: {json.dumps(summary)}", ""], {}
    for latent in shown_latents(dec, acts, cfg.show):
        parts = dec.explain(latent, n_shared=3)
        examples[f"latent_{latent}"] = parts
        lines.append(f"### latent {latent} (fires on {100 * float(rate[latent]):.2f}% of tokens)")
        lines += [f"- `{t}`" for t in top_text(latent)]
        for p in parts:
            lines.append(f"  - meta-latent {p['meta_latent']} (weight {p['weight']:.2f}, used by {p['n_users']} "
                         f"latents); shared with:")
            for other in p["shared_with"]:
                texts = top_text(other, 1)
                lines.append(f"    - latent {other}: `{texts[0] if texts else '(silent on these tokens)'}`")
        lines.append("")
    return examples, "\n".join(lines)


def meta_part(cfg: DictsciConfig, base: SparseDictionary, x: torch.Tensor, tok: Any, all_ids: torch.Tensor,
              out: Path) -> dict[str, Any]:
    """Meta-SAE on the widest SAE, a control on random rows, and a few decompositions with their contexts."""
    assert cfg.meta is not None
    dec = decompose(base, train_meta_sae(base, cfg.meta))
    result = dec.summary()
    # control: the same meta-SAE on as many random unit rows (an untrained SAE of the same shape)
    seed_everything(12345)
    random_base = make_sae(base.cfg)
    result["random_rows_explained_variance"] = decompose(random_base, train_meta_sae(random_base, cfg.meta)
                                                         ).explained_variance
    ctx_rows = x[: cfg.meta.context_rows]
    with torch.no_grad():
        acts = torch.cat([base.encode(ctx_rows[i : i + 4096]) for i in range(0, len(ctx_rows), 4096)])  # [rows, F]

    def top_text(latent: int, n: int = 3) -> list[str]:
        vals, idx = acts[:, latent].topk(n)
        return [context(tok, all_ids, int(i), cfg.seq_len) for v, i in zip(vals, idx, strict=True) if v > 0]

    examples, text = meta_examples(cfg.meta, dec, dict(result), acts, top_text)
    (out / "meta_examples.md").write_text(text)
    return {**result, "examples": examples}


def _needed(cfg: DictsciConfig) -> list[str]:
    """Names of the SAEs the chosen parts read."""
    names = {*cfg.mdl_runs} if "mdl" in cfg.parts else set()
    names |= set(_pair_names(cfg.seed_pairs)) if "seeds" in cfg.parts else set()
    names |= set(_pair_names(cfg.stitch.pairs)) if "stitch" in cfg.parts else set()
    if "meta" in cfg.parts and cfg.meta is not None:
        names.add(cfg.meta.base)
    return sorted(names)


def _summary(out: dict[str, Any]) -> str:
    said = []
    if "mdl" in out:
        said.append(f"MDL choice {out['mdl']['choice']} by code bits ({out['mdl']['choice_with_dictionary']} "
                    "with the dictionary's bits)")
    for pair, r in out.get("seeds", {}).items():
        said.append(f"{pair}: {r['reconstruction_fraction']:.0%} of latents shared")
    for pair, r in out.get("stitch", {}).items():
        said.append(f"{pair}: {r['novel_fraction']:.0%} novel latents, CE increase "
                    f"{r['ce_increase']['small']:.3f} -> {r['ce_increase']['large']:.3f}")
    if "meta" in out:
        said.append(f"meta-SAE explains {out['meta']['explained_variance']:.0%} of the decoder rows "
                    f"(random rows {out['meta']['random_rows_explained_variance']:.0%})")
    return "; ".join(said)


@register(DictsciConfig)
def dictsci(cfg: DictsciConfig, ctx: Context) -> Outcome:
    runs = Path(cfg.runs_dir)
    x = load_rows(None, Path(cfg.cache).expanduser(), cfg.rows)  # [rows, d]
    saes = {n: load_sae(runs / n / "sae") for n in _needed(cfg)}
    out: dict[str, Any] = {}
    models = [model_record(str(runs / n / "sae"), sae) for n, sae in saes.items()]
    access = ["weights", "activations"]
    if "mdl" in cfg.parts:
        out["mdl"] = mdl_part(cfg, saes, x, ctx.out)
    if "seeds" in cfg.parts:
        out["seeds"] = seeds_part(cfg, saes)
        out["init_cosine"] = {n: init_cosine(saes[n], runs / n) for n in _pair_names(cfg.seed_pairs)}
    if {"stitch", "meta"} & set(cfg.parts):
        loaded = load_model(cfg.model)
        if loaded.tokenizer is None:
            raise AnatomistError(f"model '{cfg.model}' has no tokenizer: stitch and meta need a language model")
        all_ids = load_corpus("wiki").tokenize(loaded.tokenizer, cfg.seq_len, cfg.train_seqs + cfg.ce_seqs)
        models.append(model_record(cfg.model, loaded.model))
    if "stitch" in cfg.parts:
        names = _pair_names(cfg.stitch.pairs)
        out["init_cosine"] = {**out.get("init_cosine", {}), **{n: init_cosine(saes[n], runs / n) for n in names}}
        out["stitch"] = stitch_part(cfg, saes, x, loaded.model, all_ids[cfg.train_seqs :], ctx.out)
        access.append("outputs")
    if "meta" in cfg.parts:
        assert cfg.meta is not None
        out["meta"] = meta_part(cfg, saes[cfg.meta.base], x, loaded.tokenizer, all_ids, ctx.out)
    data = [data_record(str(cfg.cache), x, n_examples=len(x))]
    return Outcome(out, _summary(out), models=models, data=data, access=access, value=out)
