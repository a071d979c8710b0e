"""APD and L3D on the toy models: an experiment file (toy + targets + config) in, a scored run folder out.

experiments/apd_tms_5_2.yaml  →  run_apd_experiment(exp, out)  →  out/metrics.json, plots
experiments/l3d_tms_5_2.yaml  →  run_l3d_experiment(exp, out)  →  out/metrics.json, plots

Scoring is `toyrun.toy_report`, as for SPD, so the three methods' numbers line up. What plays the
role of SPD's causal importances: APD's attributions, L3D's |coefficients| (one value per
component for the whole network, repeated for each target layer). L3D's subnetworks are unit-norm
directions, so it has no ML2R.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from anatomist.core.io import save_json
from anatomist.mechanisms import apd, l3d
from anatomist.mechanisms.apd import APDConfig
from anatomist.mechanisms.l3d import L3DConfig
from anatomist.mechanisms.toyrun import (
    HEADLINE,
    ToyExperiment,
    default_targets,
    record_toy_run,
    toy_batches,
    toy_report,
    write_toy_plots,
)


class APDExperiment(ToyExperiment):
    """One APD reproduction: which toy, which of its layers, which hyperparameters."""

    apd: APDConfig = Field(default_factory=APDConfig, description="APD hyperparameters.")


class L3DExperiment(ToyExperiment):
    """One L3D reproduction: which toy, which of its layers, which hyperparameters."""

    l3d: L3DConfig = Field(default_factory=L3DConfig, description="L3D hyperparameters.")


Scored = tuple[Callable[[str], Tensor], Callable[[Tensor], dict[str, Tensor]]]


def _per_target(names: list[str], per_input: Callable[[Tensor], Tensor]) -> Callable[[Tensor], dict[str, Tensor]]:
    return lambda x: dict.fromkeys(names, per_input(x))


def _run(
    exp: APDExperiment | L3DExperiment,
    out: str | Path,
    method: str,
    initial: Callable[[Any, list[str]], tuple[list[str], Scored]],
    fit: Callable[[Any, list[str], torch.Generator], tuple[Any, Scored]],
    steps: int,
    seed: int,
) -> dict[str, Any]:
    from anatomist.nets.toys import load_toy

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    exp.to_yaml(out / "experiment.yaml")
    toy = load_toy(exp.toy, seed=exp.toy_seed)
    targets = exp.targets or default_targets(toy)
    names, (m0, i0) = initial(toy, targets)
    before = toy_report(toy, names, m0, i0)
    data_gen = torch.Generator(toy.device).manual_seed(seed + 2)
    start = time.perf_counter()
    dec, (m1, i1) = fit(toy, targets, data_gen)
    seconds = time.perf_counter() - start
    after = toy_report(toy, names, m1, i1)
    plots = write_toy_plots(out, toy, names, m1, i1)
    last = dec.history[-1] if dec.history else {}
    metrics: dict[str, Any] = {
        "method": method,
        "toy": exp.toy,
        "seed": seed,
        "toy_seed": exp.toy_seed,
        "steps": steps,
        "seconds": round(seconds, 1),
        "steps_per_s": round(steps / seconds, 1),
        **{k: after[k] for k in HEADLINE if k in after},
        **{f"init_{k}": before[k] for k in HEADLINE if k in before},
        **{f"final_{k}": v for k, v in last.items() if k not in ("step", "time_s")},
        "layers": {n: after[n] for n in names if n in after},
        "plots": plots,
        "out": str(out),
    }
    save_json(out / "metrics.json", metrics)
    cfg = exp.apd if isinstance(exp, APDExperiment) else exp.l3d
    access = {"apd": ["outputs", "activations", "weights", "gradients"], "l3d": ["outputs", "weights", "gradients"]}
    record_toy_run(out, exp.toy, toy, exp, seed, steps, cfg.batch_size, access[method])
    return metrics


def run_apd_experiment(exp: APDExperiment, out: str | Path) -> dict[str, Any]:
    """Fit APD to the toy, write `out/` (experiment, metrics.json, plots) and return the metrics."""
    cfg = exp.apd

    def scored(dec: apd.APDDecomposition) -> Scored:
        return (lambda n: dec.matrices(n).detach()), _per_target(list(dec.targets), dec.attributions)

    def initial(toy: Any, targets: list[str]) -> tuple[list[str], Scored]:
        dec = apd.initial_decomposition(toy.model, targets, cfg)
        return list(dec.targets), scored(dec)

    def fit(toy: Any, targets: list[str], g: torch.Generator) -> tuple[Any, Scored]:
        data = toy_batches(toy, cfg.batch_size, g)
        dec = apd.decompose(toy.model, data, targets, cfg, generators={"data": g})
        return dec, scored(dec)

    return _run(exp, out, "apd", initial, fit, cfg.steps, cfg.seed)


def run_l3d_experiment(exp: L3DExperiment, out: str | Path) -> dict[str, Any]:
    """Fit L3D to the toy, write `out/` (experiment, metrics.json, plots) and return the metrics (no ML2R)."""
    cfg = exp.l3d

    def scored(dec: l3d.L3DDecomposition) -> Scored:
        return dec.matrices, _per_target(list(dec.targets), lambda x: dec.coefficients(x).abs())

    def initial(toy: Any, targets: list[str]) -> tuple[list[str], Scored]:
        dec = l3d.initial_decomposition(toy.model, targets, cfg)
        return list(dec.targets), scored(dec)

    def fit(toy: Any, targets: list[str], g: torch.Generator) -> tuple[Any, Scored]:
        dec = l3d.decompose(toy.model, toy_batches(toy, cfg.batch_size, g), targets, cfg, generators={"data": g})
        return dec, scored(dec)

    metrics = _run(exp, out, "l3d", initial, fit, cfg.steps, cfg.seed)
    metrics.pop("ml2r", None)
    metrics.pop("init_ml2r", None)
    for row in metrics["layers"].values():
        row.pop("ml2r", None)
    save_json(Path(out) / "metrics.json", metrics)
    return metrics
