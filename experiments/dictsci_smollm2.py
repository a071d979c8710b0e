"""MDL selection, SAE stitching and a meta-SAE on SmolLM2-135M's residual stream after block 6.

Reads the SAEs trained by experiments/dictsci_smollm2_saes.yaml and their training activations from the
activation cache; writes <runs_dir>/dictsci.json, <runs_dir>/meta_examples.md and the two plots the config
names (mdl_plot, stitch_plot).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import yaml

from anatomist.core import seed_everything
from anatomist.core.io import load_json, save_json
from anatomist.core.threads import torch_threads
from anatomist.data import load_corpus
from anatomist.dictionaries import (
    MDLConfig,
    MetaConfig,
    StitchConfig,
    decompose,
    description_length,
    match_latents,
    select_mdl,
    stage_dictionaries,
    stitch_path,
    train_meta_sae,
)
from anatomist.evaluate import evaluate_dictionary
from anatomist.features import load_sae, make_sae
from anatomist.nets.assets import load_model
from anatomist.runs.dictionaries import load_rows
from anatomist.runs.dictionaries_plots import plot_frontier, plot_stitch_paths

SEQ_LEN = 128  # the sweep's sequence length: cache row r is token 1 + r % 127 of training sequence r // 127


def context(tok: Any, ids: torch.Tensor, row: int, before: int = 12) -> str:
    """The text around cache row `row` (BOS rows are not in the cache) with the token marked."""
    seq, pos = row // (SEQ_LEN - 1), 1 + row % (SEQ_LEN - 1)
    s = ids[seq]
    left = tok.decode(s[max(1, pos - before) : pos].tolist())
    return f"{left}[[{tok.decode([int(s[pos])])}]]{tok.decode(s[pos + 1 : pos + 3].tolist())}".replace("\n", " ")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", type=Path)
    ap.add_argument("--parts", nargs="+", default=["mdl", "stitch", "meta"], help="which experiments to run")
    args = ap.parse_args()
    with torch_threads(1):
        run_parts(yaml.safe_load(args.config.read_text()), args.parts)


def run_parts(spec: dict[str, Any], parts: list[str]) -> None:
    """The experiments named in `parts`, each adding its results to <runs_dir>/dictsci.json."""
    runs = Path(spec["runs_dir"])
    x = load_rows(None, Path(spec["cache"]).expanduser(), spec["rows"])  # [rows, 576]
    seed_pairs = spec.get("seed_pairs", [])
    saes = {n: load_sae(runs / n / "sae") for n in {*spec["mdl_runs"], *sum(spec["stitch"]["pairs"] + seed_pairs, [])}}
    results_file = runs / "dictsci.json"
    out: dict[str, Any] = load_json(results_file) if results_file.is_file() else {}
    if "mdl" in parts:
        mdl_part(spec, saes, x, out)
        save_json(results_file, out)
    if "seeds" in parts:
        # control for stitching: two SAEs of one width and recipe, different seeds; what they share at the threshold
        # is what the recipe reproduces at all, the ceiling for latents shared across widths
        out["seeds"] = {f"{a} vs {b}": match_latents(saes[a], saes[b], spec["stitch"]["threshold"]).summary(
            saes[b].cfg.d_sae) for a, b in seed_pairs}
        out["init_cosine"] = {**out.get("init_cosine", {}),
                              **{n: init_cosine(saes[n], runs / n) for n in sorted({*sum(seed_pairs, [])})}}
        print("seeds", json.dumps(out["seeds"]), json.dumps(out["init_cosine"]), flush=True)
        save_json(results_file, out)
    if not {"stitch", "meta"} & set(parts):
        return
    loaded = load_model("smollm2")
    n_train = spec["train_seqs"]
    all_ids = load_corpus("wiki").tokenize(loaded.tokenizer, SEQ_LEN, n_train + spec["ce_seqs"])
    if "stitch" in parts:
        out["init_cosine"] = {**out.get("init_cosine", {}), **{
            n: init_cosine(saes[n], runs / n) for n in sorted({*sum(spec["stitch"]["pairs"], [])})}}
        print("mean cosine of decoder rows to their initial values", json.dumps(out["init_cosine"]), flush=True)
        stitch_part(spec, saes, x, out, loaded.model, all_ids[n_train:])
        save_json(results_file, out)
    if "meta" in parts:
        meta_part(spec, saes, x, out, loaded.tokenizer, all_ids, runs)
        save_json(results_file, out)


def mdl_part(spec: dict[str, Any], saes: dict[str, Any], x: torch.Tensor, out: dict[str, Any]) -> None:
    """MDL selection over the sweep."""
    mdl_cfg = MDLConfig.parse(spec["mdl"], source="mdl")
    results = [{"name": n, **description_length(saes[n], x, mdl_cfg)} for n in spec["mdl_runs"]]
    out["mdl"] = {"results": results, "choice": results[select_mdl(results)]["name"],
                  "choice_code_only": results[select_mdl(results, key="code_bits_per_input")]["name"]}
    plot_frontier(results, spec["mdl_runs"], spec["mdl_plot"],
                  title=f"TopK SAEs, SmolLM2 layer 6 (FVU tolerance {mdl_cfg.fvu_tolerance})")
    for r in results:
        print(r["name"], json.dumps({k: r[k] for k in ("l0", "fvu", "fvu_quantised", "precision_bits",
                                                       "code_bits_per_input", "bits_per_input")}), flush=True)
    print("MDL choice:", out["mdl"]["choice"], "code only:", out["mdl"]["choice_code_only"], flush=True)


def init_cosine(sae: Any, run: Path) -> float:
    """Mean cosine of each trained decoder row with its initial value (train_sae seeds, then builds the SAE).

    Near 0 for a row that has moved far from its random start; rows still near their start make decoder-cosine
    matching between SAEs of one seed re-find the shared initialisation.
    """
    seed_everything(int(yaml.safe_load((run / "config.yaml").read_text())["seed"]))
    w0, w = make_sae(sae.cfg).W_dec.detach().float(), sae.W_dec.detach().float()  # [F, d] each
    return float(torch.nn.functional.cosine_similarity(w0, w, dim=-1).mean())


def stitch_part(spec: dict[str, Any], saes: dict[str, Any], x: torch.Tensor, out: dict[str, Any], model: Any,
                held_out: torch.Tensor) -> None:
    """Stitching along the widths; CE increase at the path's landmarks on held-out sequences."""
    cfg = StitchConfig.parse({"threshold": spec["stitch"]["threshold"]}, source="stitch")
    out["stitch"], paths = {}, {}
    for small_name, large_name in spec["stitch"]["pairs"]:
        small, large = saes[small_name], saes[large_name]
        r = stitch_path(small, large, x, cfg)
        stages = stage_dictionaries(small, large, match_latents(small, large, cfg.threshold))
        r["ce_increase"] = {n: evaluate_dictionary(d, model, held_out, spec["site"])["ce_increase"]
                            for n, d in stages.items()}
        name = f"{small_name} -> {large_name}"
        out["stitch"][name], paths[name] = r, r["path"]
        print(name, json.dumps({k: v for k, v in r.items() if k != "path"}), flush=True)
    plot_stitch_paths(paths, Path(spec["stitch_plot"]), title="SmolLM2 layer 6: small SAE -> large SAE")


def meta_part(spec: dict[str, Any], saes: dict[str, Any], x: torch.Tensor, out: dict[str, Any], tok: Any,
              all_ids: torch.Tensor, runs: Path) -> None:
    """Meta-SAE on the widest SAE; a few decompositions with top-activating contexts."""
    m = spec["meta"]
    base = saes.get(m["base"]) or load_sae(runs / m["base"] / "sae")
    meta_cfg = MetaConfig.parse({k: m[k] for k in ("d_meta", "k", "steps", "batch_size", "lr")}, source="meta")
    dec = decompose(base, train_meta_sae(base, meta_cfg))
    out["meta"] = dec.summary()
    print("meta", json.dumps(out["meta"]), flush=True)
    # control: the same meta-SAE on as many random unit rows (an untrained SAE of the same shape)
    seed_everything(12345)
    random_base = make_sae(base.cfg)
    out["meta"]["random_rows_explained_variance"] = decompose(random_base, train_meta_sae(random_base, meta_cfg)
                                                              ).explained_variance
    print("meta control (random rows)", out["meta"]["random_rows_explained_variance"], flush=True)
    ctx_rows = x[: m["context_rows"]]
    with torch.no_grad():
        acts = torch.cat([base.encode(ctx_rows[i : i + 4096]) for i in range(0, len(ctx_rows), 4096)])
    rate = (acts != 0).float().mean(0)  # [F]
    n_meta = (dec.codes != 0).sum(-1)  # [F]
    # shown: the most frequent non-dense latents (fire on < 2% of tokens) that use 3+ meta-latents
    candidates = ((rate < 0.02) & (n_meta >= 3)).nonzero().flatten()
    shown = candidates[rate[candidates].argsort(descending=True)][: m["show"]].tolist()

    def top_text(latent: int, n: int = 3) -> list[str]:
        vals, idx = acts[:, latent].topk(n)
        return [context(tok, all_ids, int(i)) for v, i in zip(vals, idx, strict=True) if v > 0]

    lines = [f"meta-SAE on {m['base']}: {json.dumps(out['meta'])}", ""]
    out["meta"]["examples"] = []
    for latent in shown:
        parts = dec.explain(latent, n_shared=3)
        out["meta"]["examples"].append({"latent": latent, "meta": parts})
        lines.append(f"### latent {latent} (fires on {100 * float(rate[latent]):.2f}% of tokens)")
        lines += [f"- `{t}`" for t in top_text(latent)]
        for p in parts:
            lines.append(f"  - meta-latent {p['meta_latent']} (weight {p['weight']:.2f}, used by {p['n_users']} "
                         f"latents); shared with:")
            for other in p["shared_with"]:
                texts = top_text(other, 1)
                lines.append(f"    - latent {other}: `{texts[0] if texts else '(silent on these tokens)'}`")
        lines.append("")
    (runs / "meta_examples.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
