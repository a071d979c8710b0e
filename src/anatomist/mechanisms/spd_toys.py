"""SPD on the toy models: an experiment file (toy + targets + SPD config) in, a scored run folder out.

experiments/spd_tms_5_2.yaml  →  run_spd_experiment(exp, out)  →  out/metrics.json, plots, decomposition
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from anatomist.core.config import Config
from anatomist.core.io import save_json
from anatomist.mechanisms import spd
from anatomist.mechanisms.spd import SPDConfig
from anatomist.mechanisms.toyrun import (
    HEADLINE,
    default_targets,
    record_toy_run,
    toy_batches,
    toy_report,
    write_toy_plots,
)


class SPDExperiment(Config):
    """One SPD reproduction: which toy, which of its layers, which hyperparameters."""

    toy: str = Field(default="tms-5-2", description="Toy name (see `anatomist toy list`).")
    toy_seed: int = Field(default=0, description="Seed of the trained toy (a cached toy is reused).")
    targets: list[str] | None = Field(
        default=None, description="Module-name patterns to decompose (default: the layers the paper decomposes)."
    )
    spd: SPDConfig = Field(default_factory=SPDConfig, description="SPD hyperparameters.")


def run_spd_experiment(
    exp: SPDExperiment, out: str | Path, resume: bool = False, callback: spd.Callback | None = None
) -> dict[str, Any]:
    """Fit SPD to the toy, write `out/` (config, decomposition, metrics.json, plots) and return the metrics.

    The metrics hold the recovery scores of the initial (untrained) decomposition next to the final
    ones, so a high score that a random start already reaches is visible as such.
    """
    from anatomist.nets.toys import load_toy

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    exp.to_yaml(out / "experiment.yaml")
    toy = load_toy(exp.toy, seed=exp.toy_seed)
    targets = exp.targets or default_targets(toy)
    cfg = exp.spd

    initial = spd.initial_decomposition(toy.model, targets, cfg)
    names = list(initial.targets)
    before = toy_report(toy, names, lambda n: initial.matrices(n).detach(), initial.importances)

    data_gen = torch.Generator(toy.device).manual_seed(cfg.seed + 2)
    start = time.perf_counter()
    dec = spd.decompose(
        toy.model,
        toy_batches(toy, cfg.batch_size, data_gen),
        targets,
        cfg,
        run_dir=out,
        resume=resume,
        generators={"data": data_gen},
        callback=callback,
    )
    seconds = time.perf_counter() - start
    dec.save(out)
    after = toy_report(toy, names, lambda n: dec.matrices(n).detach(), dec.importances)
    plots = write_toy_plots(out, toy, names, lambda n: dec.matrices(n).detach(), dec.importances)
    last = dec.history[-1] if dec.history else {}
    metrics: dict[str, Any] = {
        "toy": exp.toy,
        "seed": cfg.seed,
        "toy_seed": exp.toy_seed,
        "steps": cfg.steps,
        "seconds": round(seconds, 1),
        **{k: after[k] for k in HEADLINE if k in after},
        **{f"init_{k}": before[k] for k in HEADLINE if k in before},
        "ci_l0": after["ci_l0_total"],
        **{f"final_{k}": v for k, v in last.items() if k not in ("step", "time_s")},
        "layers": {n: after[n] for n in names if n in after},
        "init_layers": {n: before[n] for n in names if n in before},
        "plots": plots,
        "out": str(out),
    }
    save_json(out / "metrics.json", metrics)
    # SPD reads the weights, the inner activations (CI) and the outputs, and trains by gradients
    record_toy_run(out, exp.toy, toy, exp, cfg.seed, cfg.steps, cfg.batch_size,
                   ["outputs", "activations", "weights", "gradients"])
    return metrics
