"""SPD on the toy models: an experiment file (toy + targets + SPD config) in, a scored run folder out.

experiments/spd_tms_5_2.yaml  →  run_spd_experiment(exp, out)  →  out/metrics.json, plots, decomposition
out/checkpoints/step_N        →  score_spd_checkpoint(out, N) →  the same scores, while a long run trains
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from anatomist.core.checkpoint import Checkpointer
from anatomist.core.errors import AnatomistError
from anatomist.core.io import save_json
from anatomist.mechanisms import spd
from anatomist.mechanisms.spd import SPDConfig
from anatomist.mechanisms.toyrun import (
    HEADLINE,
    ToyExperiment,
    default_targets,
    record_toy_run,
    toy_batches,
    toy_report,
    write_toy_plots,
)


class SPDExperiment(ToyExperiment):
    """One SPD reproduction: which toy, which of its layers, which hyperparameters."""

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


def score_spd_checkpoint(run: str | Path, step: int | None = None) -> dict[str, Any]:
    """Score the newest (or a given) checkpoint of a run folder written by `run_spd_experiment`.

    Long schedules (TMS 40-10, the residual MLPs: hours of CPU) can be followed, or judged after
    being stopped, without waiting for the end: the scores are `toy_report`'s, as in metrics.json.
    """
    from anatomist.nets.toys import load_toy

    run = Path(run)
    exp = SPDExperiment.from_yaml(run / "experiment.yaml")
    ckpt = Checkpointer(run)
    steps = ckpt.steps()
    if not steps:
        raise AnatomistError(f"{ckpt.dir}: no checkpoint to score")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise AnatomistError(f"{ckpt.dir}: no checkpoint of step {step} (there are: {', '.join(map(str, steps))})")
    toy = load_toy(exp.toy, seed=exp.toy_seed)
    dec = spd.initial_decomposition(toy.model, exp.targets or default_targets(toy), exp.spd)
    ckpt.load_model(dec, step)
    names = list(dec.targets)
    report = toy_report(toy, names, lambda n: dec.matrices(n).detach(), dec.importances)
    return {
        "toy": exp.toy,
        "step": step,
        **{k: report[k] for k in HEADLINE if k in report},
        "ci_l0": report["ci_l0_total"],
        "layers": {n: report[n] for n in names if n in report},
        "run": str(run),
    }
