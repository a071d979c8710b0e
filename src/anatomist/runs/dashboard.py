"""Run kind `dashboard`: the feature dashboard of a dictionary on a language model; and the demo's dashboard steps.

The dashboard is written into the run folder itself (dashboard.json and latents_NNN.json beside config.yaml,
metrics.json and provenance.json), so `anatomist report` finds it and links its pages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from anatomist.core.config import read_yaml_mapping
from anatomist.core.errors import AnatomistError
from anatomist.core.io import load_json
from anatomist.core.provenance import data_record, model_record
from anatomist.data import load_corpus, load_images
from anatomist.features.base import SparseDictionary
from anatomist.features.formats import load_sae
from anatomist.features.train import TrainConfig, train_sae
from anatomist.nets.assets import load_model
from anatomist.report.dashboard import INDEX
from anatomist.report.sources import image_dashboard, lm_dashboard
from anatomist.runs.base import Context, Outcome, RunConfig, register, run


class DashboardConfig(RunConfig):
    """Feature dashboard of a dictionary on a language model, over cached activations (harvested once)."""

    kind: Literal["dashboard"] = "dashboard"
    sae: str = Field(description="a dictionary folder (anatomist, SAELens or sparsify format)")
    model: str | None = Field(None, description="model it reads (null: the one its metadata names)")
    site: str | None = Field(None, description="site it reads (null: the one its metadata names)")
    corpus: str = Field("wiki", description="packaged corpus the sequences come from")
    n_seqs: int = Field(256, gt=0, description="sequences of the corpus to pass over")
    seq_len: int = Field(128, gt=1, description="tokens per sequence (BOS included, left out of the rows)")
    block_seqs: int = Field(32, gt=0, description="sequences per harvested block; a training run's value reuses "
                                                  "its cached activations")


def model_and_site(cfg: DashboardConfig, sae: SparseDictionary) -> tuple[str, str]:
    """The model and site from the config, else from the dictionary's metadata (anatomist or SAELens names)."""
    model = cfg.model or sae.metadata.get("model") or sae.metadata.get("model_name")
    site = cfg.site or sae.metadata.get("site") or sae.metadata.get("hook_name")
    if not model or not site:
        raise AnatomistError(f"{cfg.sae}: its metadata names no model/site; pass --model and --site")
    return str(model), str(site)


@register(DashboardConfig)
def dashboard(cfg: DashboardConfig, ctx: Context) -> Outcome:
    sae = load_sae(cfg.sae)
    model, site = model_and_site(cfg, sae)
    loaded = load_model(model)
    if loaded.tokenizer is None:
        raise AnatomistError(f"model '{model}' has no tokenizer: token dashboards need one")
    tokens = load_corpus(cfg.corpus).tokenize(loaded.tokenizer, seq_len=cfg.seq_len, n_seqs=cfg.n_seqs)
    times = lm_dashboard(sae, ctx.out, model_name=model, site=site, tokens=tokens, loaded=loaded,
                         block_seqs=cfg.block_seqs)
    rows = int(times["rows"])
    never = sum(1 for d in load_json(ctx.out / INDEX)["latents"]["density"] if not d)
    metrics = {"model": model, "site": site, "latents": sae.cfg.d_sae, "tokens": rows, "never_fired": never,
               **{k: round(v, 2) for k, v in times.items() if k != "rows"}}
    summary = (f"dashboard of {sae.cfg.d_sae} latents on {model} {site} over {rows:,} tokens: {never} never fired "
               f"(pass {times['pass_s']:.1f} s)")
    return Outcome(metrics, summary,
                   models=[model_record(model, loaded.model), model_record(f"dictionary {cfg.sae}", sae)],
                   data=[data_record(cfg.corpus, tokens, n_tokens=rows)],
                   access=["activations", "weights"],  # weights: the unembedding, for logit effects
                   value=ctx.out)


def dashboard_step(run_dir: Path) -> dict[str, Any]:
    """Demo step: the dashboard of run_dir/sae_smollm2/sae (the `sae` step) over the tokens it was trained on."""
    part = Path(run_dir) / "sae_smollm2"
    if not (part / "sae").is_dir():
        raise AnatomistError(f"{part / 'sae'}: missing; the dashboard step needs the demo's `sae` step first")
    trained = read_yaml_mapping(part / "config.yaml")
    data = trained["data"]
    # tokens pack sequentially, so the first n_seqs are the SAE's training sequences (its held-out ones follow):
    # the same tokens and blocks as its training, so the cached activations are reused
    cfg = DashboardConfig(sae=str(part / "sae"), model=trained["model"], site=trained["site"], corpus=data["corpus"],
                          n_seqs=data["n_seqs"], seq_len=data["seq_len"], block_seqs=data["block_seqs"])
    result = run(cfg, part / "dashboard")
    m = result.metrics
    return {"latents": m["latents"], "tokens": m["tokens"], "never_fired": m["never_fired"],
            "harvest_s": round(m["harvest_s"], 1), "pass_s": m["pass_s"], "write_s": round(m["write_s"], 1),
            "dashboard": str(result.out)}


MNIST_CONFIG: dict[str, Any] = {
    "model": "mnist-cnn",
    "site": "classifier.relu3",  # the 128 ReLU units after fc1
    "data": {"cache": "auto", "eval_seqs": 500, "block_seqs": 500, "buffer_rows": 4500, "model_batch_size": 500},
    "sae": {"arch": "topk", "d_in": 128, "d_sae": 256, "k": 8},
    "steps": 300,
    "batch_size": 256,
    "lr": 3e-3,
    "log_every": 50,
    "eval_every": 150,
    "checkpoint_every": 300,
}


def mnist_step(run_dir: Path) -> dict[str, Any]:
    """Demo step: a small TopK SAE on the MNIST CNN's fc1 units, and its dashboard of top-activating digits."""
    out = Path(run_dir) / "sae_mnist"
    cfg = TrainConfig.parse(MNIST_CONFIG, source="mnist dashboard config")
    cnn = load_model("mnist-cnn")
    # [5000, 1, 28, 28] in [0, 1], shuffled so the held-out last rows are all digits, not all nines
    images = load_images("mnist").shuffled(seed=0).images
    sae, m = train_sae(cfg, out, cnn.model, images)
    image_dashboard(sae, out / "dashboard", model=cnn.model, site=cfg.site, images=images,
                    meta={"model": "mnist-cnn", "images": "mnist (5,000 digits)"})
    return {"fvu": round(float(m["fvu"]), 4), "l0": round(float(m["l0"]), 2), "dashboard": str(out / "dashboard")}
