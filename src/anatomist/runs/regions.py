"""Run kinds `regions-density` and `regions-cluster`: the polytope lens on real models.

`regions-density`: straight paths between pairs of inputs of different classes (MNIST digits,
or, for a language model, the input embeddings of two wiki rows whose next-token predictions
differ). Along each path: code changes per bin at every site and the model's prediction. The
paper's claim is that boundary density peaks where the prediction changes; we compare the density
in a window around the change with the density elsewhere, and, as controls, around the path's
middle and on paths between two inputs of the same class.

`regions-cluster`: k-medoids clusters of inputs (images, or tokens of the wiki corpus) by code
(Hamming on hard codes, L1 on soft codes), raw activation (Euclidean, the activation module's
output) and direction (cosine), at equal k, scored against labels (digit classes; token labels).
On a vision transformer (`nets.vision`; its MLPs' GELU sites give soft codes Phi(z)) `tokens: token`
gives one code per token instead of one per image: rows are the CLS and patch tokens, labelled by
their image's class (`digit`) and their position (`position`, 0 = CLS), so one can ask whether the
regions a token falls in say what the image is or where the token sits. Both kinds also report the
code density per site (share of units with z > 0; for per-token codes split into CLS and patches)
and how many distinct hard codes (regions) the rows occupy.

Each writes its plots (and, for density, `paths.json`: every path's counts) into the run folder; the
numbers go to metrics.json through `run(config, out)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from anatomist.core.errors import AnatomistError
from anatomist.core.io import save_json
from anatomist.core.progress import progress
from anatomist.core.provenance import data_record, model_record
from anatomist.data import load_corpus, load_images
from anatomist.data.token_labels import token_labels
from anatomist.mechanisms.components import model_output
from anatomist.nets.assets import LoadedModel, load_model
from anatomist.nets.sites import Site, capture, splice
from anatomist.nets.vision import is_vision_transformer, vision_layout
from anatomist.regions.cluster import Metric, cluster, score_clusters
from anatomist.regions.codes import CodeSite, SplineCodes, code_sites, encode, nearby_activations, preactivations
from anatomist.regions.paths import PathProbe, search_crossings
from anatomist.runs.base import Context, Outcome, RunConfig, register
from anatomist.runs.plots.regions import plot_clusters, plot_density

# the polytope lens reads activations (their signs) and the predicted class (outputs)
ACCESS = ("activations", "outputs")


class DensityConfig(RunConfig):
    """Boundary density along paths between inputs of different classes (polytope lens)."""

    kind: Literal["regions-density"] = "regions-density"
    smoke: ClassVar[tuple[str, ...]] = ("pairs=2", "same_class_pairs=1", "bins=10")
    model: str = Field(
        default="mnist-cnn", description="packaged model or local folder (image classifier or causal LM)"
    )
    sites: tuple[str, ...] = Field(
        default=(), description="activation modules; empty: every activation (images) or 3 MLPs"
    )
    pairs: int = Field(default=50, ge=1, description="paths between inputs whose predicted classes differ")
    same_class_pairs: int = Field(default=20, ge=0, description="control paths between two inputs of the same class")
    bins: int = Field(default=200, ge=10, description="samples per path (code changes are counted between neighbours)")
    exact_pairs: int = Field(
        default=8,
        ge=0,
        description="pairs also counted exactly (bisection), to measure what sampling misses; "
        "costly on language models (every crossing of every token's units is isolated): use 0 there",
    )
    window: float = Field(default=0.05, gt=0, lt=0.5, description="half-width in t of the window around a class change")
    images: str = Field(default="mnist", description="image set for image classifiers")
    seq_len: int = Field(default=16, ge=2, description="tokens per row for language models")
    seed: int = Field(default=0, description="seed for choosing pairs")


class ClusterConfig(RunConfig):
    """Clustering inputs by spline codes vs activations vs directions, scored against labels (polytope lens)."""

    kind: Literal["regions-cluster"] = "regions-cluster"
    smoke: ClassVar[tuple[str, ...]] = ("n=48", "k=3", "fit_on=48", "runs=1", "seq_len=16", "top_tokens=3")
    model: str = Field(
        default="mnist-cnn", description="packaged model or local folder (image classifier or causal LM)"
    )
    sites: tuple[str, ...] = Field(
        default=(), description="activation modules; empty: every activation (images) or 3 MLPs"
    )
    n: int = Field(default=2000, ge=10, description="images, or tokens for a language model")
    k: int = Field(default=10, ge=2, description="clusters (the same for every representation)")
    fit_on: int = Field(default=2000, ge=10, description="k-medoids is fitted on at most this many rows")
    images: str = Field(default="mnist", description="image set for image classifiers")
    seq_len: int = Field(default=128, ge=2, description="tokens per row for language models")
    top_tokens: int = Field(default=20, ge=2, description="token identity is scored on the most frequent tokens only")
    tokens: Literal["image", "token"] = Field(
        default="image",
        description="vision transformers: 'image' one code per image (all its tokens' units), 'token' one code "
        "per token (CLS and patches), labelled by the image's class and the token's position",
    )
    runs: int = Field(default=1, ge=1, description="k-medoids runs (seeds seed, seed+1, ...); scores are their mean")
    seed: int = Field(default=0, description="seed for sampling and k-medoids")


def default_sites(loaded: Any) -> tuple[str, ...]:
    """Every activation module of an image model; the MLP activations at 1/10, 1/2 and 9/10 depth of an LM."""
    if loaded.kind == "image-classifier":
        return tuple(nearby_activations(loaded.model, "", n=1000))
    if loaded.layers_path is None:
        raise AnatomistError(f"model '{loaded.name}': name the activation modules with --sites")
    layers = len(dict(loaded.model.named_modules())[loaded.layers_path])
    acts = nearby_activations(loaded.model, "", n=10_000)
    picks = []
    for i in sorted({layers // 10, layers // 2, (9 * layers) // 10}):
        inside = [a for a in acts if a.startswith(f"{loaded.layers_path}.{i}.")]
        picks += inside[:1]
    if not picks:
        raise AnatomistError(f"model '{loaded.name}': no activation module in its layers; name them with --sites")
    return tuple(picks)


def _load(name: str) -> LoadedModel:
    loaded = load_model(name)
    if loaded.kind == "encoder":
        raise AnatomistError(f"model '{name}' is an encoder: the regions experiments need a classifier or a causal LM")
    return loaded


# --- density -------------------------------------------------------------------------------------


def _classes(probe: PathProbe, t: np.ndarray) -> np.ndarray:
    """The prediction at each path position: argmax of the last position's logits."""
    out = []
    for i in range(0, len(t), probe.batch_size):
        pts = probe.points(t[i : i + probe.batch_size])
        with torch.no_grad():
            if probe.at is None:
                logits = model_output(probe.model(pts))  # an HF classifier (a ViT) returns .logits
            else:
                with splice(probe.model, {probe.at: _constant(pts)}):
                    logits = probe.model(**_repeat_inputs(probe.inputs, len(pts))).logits
        out.append(logits.reshape(len(pts), -1, logits.shape[-1])[:, -1].argmax(-1))
    return torch.cat(out).numpy()


def _constant(value: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda _v: value


def _repeat_inputs(inputs: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    return {key: v.expand(k, *v.shape[1:]) for key, v in inputs.items()}


def _endpoints(loaded: Any, cfg: DensityConfig, rng: np.random.Generator) -> tuple[list[Any], np.ndarray, Site | None]:
    """Path ends (one input each, or (embedding, ids) for LMs) with their predicted classes."""
    model = loaded.model
    if loaded.kind == "image-classifier":
        imgs = load_images(cfg.images)
        # a random pool big enough to find the pairs in, so few images are run through the model
        pool = np.sort(rng.choice(len(imgs), min(len(imgs), 10 * (cfg.pairs + cfg.same_class_pairs) + 100), False))
        x = imgs.images[torch.from_numpy(pool)]
        with torch.no_grad():
            pred = torch.cat([model_output(model(x[i : i + 500])).argmax(-1) for i in range(0, len(x), 500)])
        return list(zip(x, [None] * len(x), strict=True)), pred.numpy(), None
    n_rows = 4 * (cfg.pairs + cfg.same_class_pairs)
    ids = load_corpus("wiki").tokenize(loaded.tokenizer, cfg.seq_len, n_rows)
    emb = Site(next(n for n, m in model.named_modules() if m is model.get_input_embeddings()), "output")
    vectors = capture(model, ids, emb)[emb]  # [n_rows, seq_len, d_model]
    with torch.no_grad():
        pred = model(input_ids=ids).logits[:, -1].argmax(-1)
    return [(vectors[i], {"input_ids": ids[i : i + 1]}) for i in range(n_rows)], pred.numpy(), emb


def _pick_pairs(classes: np.ndarray, n: int, same: bool, rng: np.random.Generator) -> list[tuple[int, int]]:
    pairs: list[tuple[int, int]] = []
    for _ in range(200 * n):
        if len(pairs) == n:
            break
        i, j = (int(v) for v in rng.choice(len(classes), 2, replace=False))
        if (classes[i] == classes[j]) == same and (i, j) not in pairs:
            pairs.append((i, j))
    if len(pairs) < n:
        raise AnatomistError(f"found only {len(pairs)} of {n} {'same' if same else 'different'}-class pairs")
    return pairs


def _window_ratio(profile: np.ndarray, centres: list[float], window: float) -> float:
    """Mean density in bins within `window` of any centre, over the mean elsewhere."""
    mids = (np.arange(len(profile)) + 0.5) / len(profile)
    near = np.zeros(len(profile), dtype=bool)
    for c in centres:
        near |= np.abs(mids - c) <= window
    inside, outside = profile[near].mean(), profile[~near].mean()
    return float(inside / outside) if outside > 0 else float("inf")


@register(DensityConfig)
def density(cfg: DensityConfig, ctx: Context) -> Outcome:
    """Boundary density along paths (see the module docstring); paths.json and plots go to the run folder."""
    loaded = _load(cfg.model)
    sites = code_sites(loaded.model, cfg.sites or default_sites(loaded))
    rng = np.random.default_rng(cfg.seed)
    ends, classes, at = _endpoints(loaded, cfg, rng)
    grid = np.linspace(0.0, 1.0, cfg.bins + 1)
    mids = (grid[:-1] + grid[1:]) / 2
    records = []
    todo = [(p, False) for p in _pick_pairs(classes, cfg.pairs, False, rng)]
    todo += [(p, True) for p in _pick_pairs(classes, cfg.same_class_pairs, True, rng)]
    for n, ((i, j), same) in enumerate(progress(todo, total=len(todo), desc="paths")):
        (a, inputs), (b, _) = ends[i], ends[j]
        probe = PathProbe(loaded.model, sites, a, b, at, inputs)
        signs = probe(grid) > 0  # [bins + 1, n_units]
        changes = (signs[1:] != signs[:-1]).numpy()
        counts = np.stack([changes[:, s].sum(1) for s in probe.slices()])  # [n_sites, bins]
        pred = _classes(probe, grid)
        flips = [float(mids[k]) for k in np.nonzero(pred[1:] != pred[:-1])[0]]
        rec: dict[str, Any] = {
            "i": i,
            "j": j,
            "same_class": same,
            "class_a": int(classes[i]),
            "class_b": int(classes[j]),
            "length": probe.length,
            "changes_at": flips,
            "counts": counts.tolist(),
            "pred": pred.tolist(),
        }
        if not same and n < cfg.exact_pairs:
            exact = search_crossings(PathProbe(loaded.model, sites, a, b, at, inputs), cfg.bins)
            rec["exact"] = {"per_site": exact.per_site(), "unresolved": exact.unresolved, "evals": exact.n_evals}
        records.append(rec)
    names = [c.module for c in sites]
    result = {"sites": names, **summarise_density(records, names, cfg.window)}
    save_json(ctx.out / "paths.json", records)
    result["plots"] = plot_density(records, names, ctx.out)
    ends_t = torch.stack([e[0].reshape(-1) for e in ends])  # the path end points: what was run
    data = data_record(_data_name(loaded, cfg.images), ends_t, n_examples=len(ends))
    return Outcome(result, _density_summary(cfg, result), models=[model_record(loaded.name, loaded.model)],
                   data=[data], access=ACCESS, value=result)


def _data_name(loaded: LoadedModel, images: str) -> str:
    return images if loaded.kind == "image-classifier" else "wiki"


def _density_summary(cfg: DensityConfig, result: dict[str, Any]) -> str:
    last = result["sites"][-1]
    s = result["per_site"][last]
    return (f"{cfg.model}: boundary density near a class change {s['ratio_at_change']:.2f}x elsewhere at {last} "
            f"(same-class control {s['ratio_same_class_matched']:.2f}x) over {result['pairs_with_class_change']} "
            "paths")


def _profiles(record: dict[str, Any], sites: list[str]) -> dict[str, np.ndarray]:
    """Each site's code changes per bin, and "all sites": the mean of the sites' profiles, each over its mean."""
    counts = np.asarray(record["counts"], dtype=float)  # [n_sites, bins]
    means = counts.mean(1, keepdims=True)
    normalised = np.divide(counts, means, out=np.zeros_like(counts), where=means > 0)
    return {**dict(zip(sites, counts, strict=True)), "all sites": normalised.mean(0)}


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def summarise_density(records: list[dict[str, Any]], sites: list[str], window: float) -> dict[str, Any]:
    """Per site: density near class changes over density elsewhere, with controls; sampling vs exact counts.

    `ratio_at_change`: median over different-class paths of (mean density within `window` of a class
    change) / (mean density elsewhere). Controls: the same ratio around the path's middle, on the same
    paths and on same-class paths, and on same-class paths in the windows where each different-class
    path changed class (`ratio_same_class_matched`): class changes fall near the middle, so the
    middle of a path is the confound to beat. `corr_peak_change`: correlation, over paths, of the density
    peak's position
    with the first class change's position (meaningful only when `change_position_sd` is not tiny).
    """
    diff = [r for r in records if not r["same_class"] and r["changes_at"]]
    same = [r for r in records if r["same_class"]]
    first = np.array([r["changes_at"][0] for r in diff])
    per_site: dict[str, dict[str, float]] = {}
    for name in [*sites, "all sites"]:
        prof = {id(r): _profiles(r, sites)[name] for r in records}
        at_change = [_window_ratio(prof[id(r)], r["changes_at"], window) for r in diff]
        smooth = [np.convolve(prof[id(r)], np.ones(5) / 5, mode="same") for r in diff]
        peak = np.array([(np.argmax(p) + 0.5) / len(p) for p in smooth])
        per_site[name] = {
            "ratio_at_change": _median(at_change),
            "share_above_1": float(np.mean(np.array(at_change) > 1)) if diff else float("nan"),
            "ratio_at_middle": _median([_window_ratio(prof[id(r)], [0.5], window) for r in diff]),
            "ratio_same_class_middle": _median([_window_ratio(prof[id(r)], [0.5], window) for r in same]),
            # position-matched control: same-class paths, windows where the different-class paths changed class
            "ratio_same_class_matched": _median(
                [_median([_window_ratio(prof[id(q)], r["changes_at"], window) for q in same]) for r in diff]
            )
            if same
            else float("nan"),
            "peak_to_change_mean_abs": float(np.mean(np.abs(peak - first))) if diff else float("nan"),
            "corr_peak_change": float(np.corrcoef(peak, first)[0, 1]) if len(diff) > 2 else float("nan"),
            "crossings_per_path": float(np.mean([np.asarray(r["counts"])[sites.index(name)].sum() for r in records]))
            if name in sites
            else float("nan"),
        }
    exact = [r for r in records if "exact" in r]
    return {
        "pairs_with_class_change": len(diff),
        "same_class_pairs": len(same),
        "change_position_mean": float(np.mean(first)) if diff else float("nan"),
        "change_position_sd": float(np.std(first)) if diff else float("nan"),
        "per_site": per_site,
        "exact_pairs": len(exact),
        "crossings_sampled": sum(int(np.asarray(r["counts"]).sum()) for r in exact),
        "crossings_exact": sum(sum(r["exact"]["per_site"].values()) for r in exact),
        "unresolved_exact": sum(r["exact"]["unresolved"] for r in exact),
    }


# --- clustering ------------------------------------------------------------------------------------


def _harvest(
    model: torch.nn.Module, batches: list[Any], sites: list[CodeSite], soft: bool, per_token: bool | None = None
) -> tuple[Any, list[np.ndarray]]:
    """Codes and post-activation values (float32 [n, units] per site) for a list of batches."""
    parts, acts = [], []
    for batch in progress(batches, total=len(batches), desc="harvest"):
        z = preactivations(model, batch, sites, per_token)
        parts.append(encode(z, sites, soft))
        with torch.no_grad():
            acts.append(
                [dict(model.named_modules())[c.module](p).float().numpy() for c, p in zip(sites, z, strict=True)]
            )
    return SplineCodes.concat(parts), [np.concatenate([a[k] for a in acts]) for k in range(len(sites))]


def _cluster_data(loaded: Any, cfg: ClusterConfig) -> tuple[list[Any], dict[str, np.ndarray]]:
    """Batches of inputs and the labels of their rows."""
    rng = np.random.default_rng(cfg.seed)
    if loaded.kind == "image-classifier":
        imgs = load_images(cfg.images)
        if cfg.n > len(imgs):
            raise AnatomistError(f"n = {cfg.n} but image set '{cfg.images}' has {len(imgs)} images")
        pick = np.sort(rng.choice(len(imgs), cfg.n, replace=False))
        x = imgs.images[torch.from_numpy(pick)]
        digit = imgs.labels[pick].numpy()
        if cfg.tokens == "token":
            return [x[i : i + 250] for i in range(0, cfg.n, 250)], _token_labels(loaded, x, digit)
        return [x[i : i + 250] for i in range(0, cfg.n, 250)], {"digit": digit}
    n_seqs = -(-cfg.n // cfg.seq_len)
    ids = load_corpus("wiki").tokenize(loaded.tokenizer, cfg.seq_len, n_seqs)
    labels = token_labels(ids, loaded.tokenizer, top_tokens=cfg.top_tokens)
    return [ids[i : i + 8] for i in range(0, n_seqs, 8)], {name: lab.values for name, lab in labels.items()}


def _token_labels(loaded: LoadedModel, x: torch.Tensor, digit: np.ndarray) -> dict[str, np.ndarray]:
    """Per-token labels of a vision transformer's rows (image-major, then token order, as `rows` flattens them):
    the image's class and the token's position (0 = CLS when there is one, then registers, then patches)."""
    if not is_vision_transformer(loaded.model):
        raise AnatomistError(f"tokens: token needs a vision transformer; '{loaded.name}' has one code per image")
    n_tokens = vision_layout(loaded.model).n_tokens((int(x.shape[-2]), int(x.shape[-1])))
    return {"digit": np.repeat(digit, n_tokens), "position": np.tile(np.arange(n_tokens), len(digit))}


def code_density(codes: SplineCodes, cls_rows: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Per site: the share of units on (z > 0), the mean soft code where stored, the number of distinct hard
    codes (regions occupied) and the share of rows alone in theirs. With `cls_rows` (bool per row), the share
    on for CLS rows and for the others (patches) apart."""
    out = {}
    for site in codes.sites:
        hard = codes.hard()[:, codes.site_units(site)]
        _, counts = np.unique(np.packbits(hard, axis=1), axis=0, return_counts=True)
        row: dict[str, float] = {"on": float(hard.mean()), "regions": int(len(counts)),
                                 "unique_rows": float((counts == 1).sum() / len(hard))}
        if codes.soft is not None:
            row["soft_mean"] = float(codes.values()[:, codes.site_units(site)].mean())
        if cls_rows is not None:
            row["on_cls"], row["on_patches"] = float(hard[cls_rows].mean()), float(hard[~cls_rows].mean())
        out[site] = row
    return out


@register(ClusterConfig)
def cluster_inputs(cfg: ClusterConfig, ctx: Context) -> Outcome:
    """Purity and NMI of code / activation / direction clusters at each site and all sites together."""
    loaded = _load(cfg.model)
    sites = code_sites(loaded.model, cfg.sites or default_sites(loaded))
    soft = any(c.kind == "soft" for c in sites)
    batches, labels = _cluster_data(loaded, cfg)
    per_token = True if cfg.tokens == "token" else None
    codes, acts = _harvest(loaded.model, batches, sites, soft, per_token)
    names = [c.module for c in sites] + (["all"] if len(sites) > 1 else [])
    rows = []
    for name in progress(names, total=len(names), desc="cluster"):
        cols = slice(None) if name == "all" else codes.site_units(name)
        act = np.concatenate(acts, axis=1) if name == "all" else acts[[c.module for c in sites].index(name)]
        reps: list[tuple[str, Metric, Any]] = [("code", "hamming", codes.hard()[:, cols])]
        if soft:
            reps.append(("soft code", "l1", codes.values()[:, cols]))
        reps += [("activation", "euclidean", act), ("direction", "cosine", act)]
        for rep, metric, feats in reps:
            runs = [cluster(feats, cfg.k, metric, fit_on=cfg.fit_on, seed=cfg.seed + r) for r in range(cfg.runs)]
            for label, values in labels.items():
                scores = [score_clusters(got.assignment, values, seed=cfg.seed) for got in runs]
                mean = {key: float(np.mean([sc[key] for sc in scores])) for key in scores[0]}
                spread = {"nmi_sd": float(np.std([sc["nmi"] for sc in scores])), "runs": cfg.runs}
                rows.append({"site": name, "representation": rep, "metric": metric, "label": label, **mean, **spread})
    cls_rows = labels["position"] == 0 if cfg.tokens == "token" and vision_layout(loaded.model).has_cls else None
    result = {"sites": [c.module for c in sites], "n": len(codes), "code_bytes": codes.nbytes, "rows": rows,
              "code_density": code_density(codes, cls_rows)}
    result["plots"] = plot_clusters(rows, ctx.out)
    inputs = torch.cat([b if isinstance(b, torch.Tensor) else b["input_ids"] for b in batches])
    data = data_record(_data_name(loaded, cfg.images), inputs, n_examples=cfg.n)
    return Outcome(result, _cluster_summary(cfg, result), models=[model_record(loaded.name, loaded.model)],
                   data=[data], access=ACCESS, value=result)


def _cluster_summary(cfg: ClusterConfig, result: dict[str, Any]) -> str:
    site = result["sites"][-1]
    mine = [r for r in result["rows"] if r["site"] == site]
    label = mine[0]["label"]
    nmi = {r["representation"]: r["nmi"] for r in mine if r["label"] == label}
    return (f"{cfg.model}: NMI with {label} at {site}: " + ", ".join(f"{k} {v:.2f}" for k, v in nmi.items())
            + f" (k {cfg.k}, {result['n']} rows)")
