"""`anatomist demo`: the main job on embedded defaults, a short tour that ends in a run folder.

Each step is a function `step(run_dir) -> dict` of numbers, named by a dotted path so that a
step's heavy imports happen only when it runs. The run folder gets `config.yaml`, one
`metrics.json` with every step's numbers, and each step's plots.
"""

from __future__ import annotations

import importlib
import math
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from anatomist.core.config import Config
from anatomist.core.errors import AnatomistError
from anatomist.core.io import save_json

# (name, "module:function"); each lens adds its step here.
# Steps whose entry points write no provenance.json of their own: the access they use, for the run's record.
STEP_ACCESS: dict[str, list[str]] = {
    "tms": ["weights"],
    "smollm2": ["activations", "outputs"],
    "bilinear": ["weights", "outputs", "training_data"],
}
STEPS: list[tuple[str, str]] = [
    ("tms", "anatomist.demo:tms_step"),
    ("smollm2", "anatomist.demo:smollm2_step"),
    ("sae", "anatomist.features.demo:sae_step"),
    ("dashboard", "anatomist.report.demo:dashboard_step"),
    ("mnist_sae", "anatomist.report.demo:mnist_step"),
    ("bilinear", "anatomist.runs.bilinear:step"),
    ("routes", "anatomist.routes.demo:routes_step"),
    ("spd", "anatomist.runs.mechanisms:spd_step"),
    ("regions", "anatomist.regions.demo:regions_step"),
    ("dictionaries", "anatomist.dictionaries.demo:step"),
]


class DemoConfig(Config):
    """What the demo ran (written to the run folder so a reader knows the settings)."""

    steps: list[str] = Field(default_factory=lambda: [n for n, _ in STEPS], description="steps to run, in order")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def tms_step(run_dir: Path) -> dict[str, Any]:
    """Train (or load from the cache) TMS 5-2 and check its features form a pentagon."""
    from anatomist.nets.toys import TMS, load_toy

    toy = load_toy("tms-5-2")
    assert isinstance(toy.model, TMS)
    W = toy.model.W.detach()  # [2, 5]
    angles = torch.atan2(W[1], W[0]).sort().values
    gaps = torch.diff(torch.cat([angles, angles[:1] + 2 * math.pi])) * 180 / math.pi
    plt = _plt()
    fig, ax = plt.subplots(figsize=(3.2, 3.2))
    for i in range(W.shape[1]):
        ax.arrow(0, 0, W[0, i].item(), W[1, i].item(), head_width=0.05, length_includes_head=True, color=f"C{i}")
        ax.annotate(f"f{i}", (1.12 * W[0, i].item(), 1.12 * W[1, i].item()), ha="center", va="center")
    ax.set(xlim=(-1.4, 1.4), ylim=(-1.4, 1.4), aspect="equal", title="TMS 5-2: columns of W")
    fig.tight_layout()
    fig.savefig(run_dir / "tms_5_2.png", dpi=100)
    plt.close(fig)
    return {
        "final_loss": toy.final_loss,
        "from_cache": toy.from_cache,
        "angle_gaps_deg": [round(g, 1) for g in gaps.tolist()],
        "column_norms": [round(n, 3) for n in W.norm(dim=0).tolist()],
        "plot": "tms_5_2.png",
    }


SMOLLM2_SITE, N_SEQS, SEQ_LEN = "model.layers.6", 32, 128


def smollm2_step(run_dir: Path) -> dict[str, Any]:
    """Read a SmolLM2 residual site over wiki text, and time it against a full forward."""
    site, n_seqs, seq_len = SMOLLM2_SITE, N_SEQS, SEQ_LEN
    from anatomist.data import load_corpus
    from anatomist.nets import Site, capture
    from anatomist.nets.assets import load_model

    lm = load_model("smollm2")
    tokens = load_corpus("wiki").tokenize(lm.tokenizer, seq_len=seq_len, n_seqs=n_seqs)
    batches = tokens.split(8)
    acts = []
    start = time.perf_counter()
    for batch in batches:
        acts.append(capture(lm.model, batch, Site(site))[Site(site)])
    t_capture = time.perf_counter() - start
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches[:2]:  # two batches are enough to time the full forward
            lm.model(batch)
    t_full = (time.perf_counter() - start) / 2 * len(batches)
    a = torch.cat(acts).flatten(0, 1)  # [tokens, d_model]
    a = a[torch.arange(len(a)) % seq_len != 0]  # the BOS position is an outlier in every LM
    norms = a.norm(dim=-1)
    mean_abs = a.abs().mean(0)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.bar(range(len(mean_abs)), mean_abs.numpy(), width=1.0)
    ax.set(xlabel="residual dimension", ylabel="mean |activation|", title=f"SmolLM2 {site} over {len(a)} tokens")
    fig.tight_layout()
    fig.savefig(run_dir / "smollm2_residual.png", dpi=100)
    plt.close(fig)
    top = mean_abs.topk(3)
    return {
        "site": site,
        "tokens": int(tokens.numel()),
        "d_model": int(a.shape[-1]),
        "capture_tokens_per_s": round(tokens.numel() / t_capture, 1),
        "full_forward_tokens_per_s": round(tokens.numel() / t_full, 1),
        "capture_speedup": round(t_full / t_capture, 2),
        "mean_norm": round(norms.mean().item(), 2),
        "outlier_dims": {int(i): round(v, 2) for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)},
        "plot": "smollm2_residual.png",
    }


def _resolve(path: str) -> Any:
    module, _, fn = path.partition(":")
    return getattr(importlib.import_module(module), fn)


def run_demo(out: str | Path = "runs/demo", config: DemoConfig | None = None) -> dict[str, Any]:
    """Run every step, print what it did, and write the run folder; returns all numbers."""
    from rich.console import Console

    console = Console(stderr=True)
    config = config or DemoConfig()
    run_dir = Path(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    config.to_yaml(run_dir / "config.yaml")
    known = dict(STEPS)
    results: dict[str, Any] = {}
    unknown = [n for n in config.steps if n not in known]
    if unknown:
        raise AnatomistError(f"unknown demo step(s) {unknown}; known: {list(known)}")
    for name in config.steps:
        fn = _resolve(known[name])
        start = time.perf_counter()
        console.print(f"[bold]{name}[/bold] …")
        result = fn(run_dir)
        result["seconds"] = round(time.perf_counter() - start, 1)
        results[name] = result
        console.print(f"  {name}: " + ", ".join(f"{k}={v}" for k, v in result.items() if k != "plot"))
        save_json(run_dir / "metrics.json", results)  # after every step: nothing done is lost
    _record(run_dir, config)
    console.print(f"run folder: {run_dir.resolve()}")
    from anatomist.report.site import build_report

    index = build_report(run_dir)
    console.print(f"report: {index.resolve()}")
    return {"run_dir": str(run_dir.resolve()), "report": str(index.resolve()), **results}


def _record(run_dir: Path, config: DemoConfig) -> None:
    """The run's provenance.json: the parts' own records (models, data, access) gathered, plus the demo config."""
    from anatomist.core.provenance import collect_parts, read_provenance, write_provenance

    parts = collect_parts(run_dir)
    records = [read_provenance(run_dir / p) for p in parts]
    models = {(m["name"], m["weights_sha256"]): m for r in records for m in r["models"]}
    data = {(d["name"], d.get("sha256")): d for r in records for d in r["data"]}
    access = {a for r in records for a in r["access"]} | {a for s in config.steps for a in STEP_ACCESS.get(s, [])}
    write_provenance(run_dir, models=models.values(), data=data.values(), config=config, access=access, parts=parts)
