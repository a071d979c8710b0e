"""Run kind `demo`: the main job on embedded defaults, a short tour of every lens.

Each part is a run of its own kind in a sub-folder (`out/<part>` holds config.yaml, metrics.json,
provenance.json), configured here as data. A part may read an earlier one's folder (the dashboard reads
the SAE part's dictionary). The demo prints one line in words per part as it goes; its own metrics.json
holds the `parts` table, which the report shows first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from rich.console import Console

from anatomist.core.config import read_yaml_mapping
from anatomist.core.progress import lines_to_log_only
from anatomist.core.provenance import read_provenance
from anatomist.runs.base import (
    CONFIG,
    Context,
    Outcome,
    RunConfig,
    RunResult,
    parse_run_config,
    register,
    run_or_continue,
)

# The measures a reader compares across lenses: a part's row in the demo's table carries those it has.
SHARED_MEASURES = ("fvu", "l0", "ce_increase", "loss_recovered", "kl", "dead_fraction", "mmcs", "ml2r", "alive",
                   "bits_per_input")

SAE_SMOLLM2: dict[str, Any] = {
    "kind": "sae-train", "model": "smollm2", "site": "model.layers.6",
    "data": {"corpus": "wiki", "seq_len": 128, "n_seqs": 160, "eval_seqs": 8, "block_seqs": 32, "cache": "auto"},
    "sae": {"arch": "topk", "d_in": 576, "d_sae": 2048, "k": 32},
    "steps": 250, "batch_size": 1024, "lr": 2e-3, "warmup_steps": 25, "decay_frac": 0.3, "dead_tokens": 100_000,
    "log_every": 25, "eval_every": 125, "checkpoint_every": 125, "eval_ce_seqs": 4,
}
SAE_MNIST: dict[str, Any] = {
    "kind": "sae-train", "model": "mnist-cnn", "site": "classifier.relu3",  # the 128 ReLU units after fc1
    "data": {"images": "mnist", "cache": "auto", "eval_seqs": 500, "block_seqs": 500, "buffer_rows": 4500,
             "model_batch_size": 500},
    "sae": {"arch": "topk", "d_in": 128, "d_sae": 256, "k": 8},
    "steps": 300, "batch_size": 256, "lr": 3e-3, "log_every": 50, "eval_every": 150, "checkpoint_every": 300,
}


def _lm_dashboard(out: Path) -> dict[str, Any]:
    """The SAE part's dashboard over the tokens it trained on (same blocks, so its cached activations are reused)."""
    trained = read_yaml_mapping(out / "sae" / CONFIG)
    data = trained["data"]
    return {"kind": "dashboard", "sae": str(out / "sae" / "sae"), "model": trained["model"], "site": trained["site"],
            "corpus": data["corpus"], "n_seqs": data["n_seqs"], "seq_len": data["seq_len"],
            "block_seqs": data["block_seqs"]}


# part name -> its config, given the demo's folder; in the order they run
PARTS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "tms": lambda out: {"kind": "toy-train", "toy": "tms-5-2", "use_cache": True},
    "smollm2": lambda out: {"kind": "site-read", "model": "smollm2", "site": "model.layers.6", "n_seqs": 32},
    "sae": lambda out: SAE_SMOLLM2,
    "dashboard": _lm_dashboard,
    "mnist_sae": lambda out: SAE_MNIST,
    "mnist_dashboard": lambda out: {"kind": "dashboard", "sae": str(out / "mnist_sae" / "sae"),
                                    "model": "mnist-cnn", "site": "classifier.relu3", "images": "mnist"},
    "bilinear": lambda out: {"kind": "bilinear"},
    # a short SPD schedule with a larger learning rate than the paper's 40k steps at 1e-3, about ten CPU seconds,
    # enough to single out every feature (the paper-length run is experiments/spd_tms_5_2.yaml)
    "spd": lambda out: {"kind": "spd-toy", "toy": "tms-5-2", "spd": {"steps": 600, "batch_size": 256, "lr": 2e-2,
                                                                   "importance_minimality_coeff": 1e-2,
                                                                   "log_every": 100}},
    # the tiny MoE LM trained for 200 steps (the toy's default is 800: the demo stays near a minute), cached
    "routes": lambda out: {"kind": "routes", "toy_steps": 200, "n_seqs": 64, "probe_tokens": 2000,
                           "max_clusters": 128},
    "regions_density": lambda out: {"kind": "regions-density", "pairs": 6, "same_class_pairs": 4, "bins": 60,
                                    "exact_pairs": 1},
    "regions_cluster": lambda out: {"kind": "regions-cluster", "n": 400, "k": 10, "fit_on": 400},
    "dictionaries": lambda out: {"kind": "dictionaries-tour", "images": "digits"},
}
# many small forwards: one thread is faster than two on a busy 2-core machine
ONE_THREAD_KINDS = {"regions-density", "regions-cluster"}


class DemoConfig(RunConfig):
    """The main job on embedded defaults: a short tour of every lens, each part a run of its own kind."""

    kind: Literal["demo"] = "demo"
    parts: list[str] = Field(default_factory=lambda: list(PARTS), description=f"parts to run, in order: {list(PARTS)}")

    @field_validator("parts")
    @classmethod
    def _known(cls, parts: list[str]) -> list[str]:
        unknown = [p for p in parts if p not in PARTS]
        if unknown:
            raise ValueError(f"unknown demo part(s) {unknown}; known: {list(PARTS)}")
        return parts


def part_config(name: str, out: Path) -> RunConfig:
    return parse_run_config(PARTS[name](out), source=f"demo part '{name}'")


def run_part(name: str, out: Path) -> RunResult:
    """One part into out/name; a training part whose folder holds a run of the same config continues it."""
    config = part_config(name, out)
    return run_or_continue(config, out / name, threads=1 if config.kind in ONE_THREAD_KINDS else 0)


def part_row(result: RunResult) -> dict[str, Any]:
    shared = {k: result.metrics.numbers[k] for k in SHARED_MEASURES if k in result.metrics.numbers}
    return {"kind": result.kind, "seconds": round(result.seconds, 1), **shared, "summary": result.summary}


@register(DemoConfig, composite=True)
def demo(cfg: DemoConfig, ctx: Context) -> Outcome:
    console = Console(stderr=True, soft_wrap=True, highlight=False)
    rows, start = {}, time.perf_counter()
    for name in cfg.parts:
        console.print(f"[dim]{name} …[/dim]")
        with lines_to_log_only():  # the demo speaks one line per part; step records stay in each metrics.jsonl
            result = run_part(name, ctx.out)
        rows[name] = part_row(result)
        console.print(f"[bold]{name}[/bold] ({result.seconds:.0f} s): {result.summary}")
    records = [read_provenance(ctx.out / name) for name in cfg.parts]
    models = {(m["name"], m["weights_sha256"]): m for r in records for m in r["models"]}
    data = {(d["name"], d.get("sha256")): d for r in records for d in r["data"]}
    access = {a for r in records for a in r["access"]}
    seconds = time.perf_counter() - start
    return Outcome({"parts": rows, "n_parts": len(rows)}, f"demo: {len(rows)} parts in {seconds:.0f} s",
                   models=list(models.values()), data=list(data.values()), access=access)
