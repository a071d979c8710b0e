"""Run kinds `spd-toy`, `apd-toy`, `l3d-toy`: a parameter decomposition of a toy, scored against its ground truth.

experiments/spd_tms_5_2.yaml  →  run(config, out)          →  out/metrics.json, plots, decomposition, checkpoints/
out/checkpoints/step_N        →  score_spd_checkpoint(out)  →  the same scores, while a long run trains

All three fit through `mechanisms.training.fit`, so each checkpoints and resumes (`--resume`) the same
way, and are scored by `toy_scoring.toy_report`, so their numbers line up. What plays the role of
SPD's causal importances: APD's attributions, L3D's |coefficients| (one value per component for the
whole network, repeated for each target layer), each as a share of the input's largest one (`relative`),
so SPD's thresholds fit them. L3D's subnetworks are unit-norm directions, so it reports no ML2R at all.

All three run data-parallel under torchrun (`training.fit`): every rank draws the same global batches and
trains on its slice; rank 0 trains and caches the toy first, and alone writes the plots and the decomposition.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from anatomist.core import distributed
from anatomist.core.checkpoint import Checkpointer
from anatomist.core.config import read_yaml_mapping
from anatomist.core.errors import AnatomistError
from anatomist.mechanisms import apd, l3d, spd
from anatomist.mechanisms.apd import APDConfig
from anatomist.mechanisms.components import find_targets
from anatomist.mechanisms.l3d import L3DConfig
from anatomist.mechanisms.spd import SPDConfig
from anatomist.mechanisms.training import FitConfig
from anatomist.nets.toys import load_toy
from anatomist.runs.base import CONFIG, Context, Outcome, register
from anatomist.runs.toy_scoring import (
    HEADLINE,
    Importances,
    Matrices,
    ToyExperiment,
    default_targets,
    toy_batches,
    toy_records,
    toy_report,
    write_toy_plots,
)

# what each method reads of the model: SPD and APD the inner activations too, L3D only weights and outputs
ACCESS = {
    "spd": ["outputs", "activations", "weights", "gradients"],
    "apd": ["outputs", "activations", "weights", "gradients"],
    "l3d": ["outputs", "weights", "gradients"],
}


class SPDExperiment(ToyExperiment):
    """SPD on a toy: which toy, which of its layers, which hyperparameters (experiments/spd_*.yaml)."""

    kind: Literal["spd-toy"] = "spd-toy"
    smoke: ClassVar[tuple[str, ...]] = ("spd.steps=4",)
    spd: SPDConfig = Field(default_factory=SPDConfig, description="SPD hyperparameters.")


class APDExperiment(ToyExperiment):
    """APD on a toy: which toy, which of its layers, which hyperparameters (experiments/apd_*.yaml)."""

    kind: Literal["apd-toy"] = "apd-toy"
    smoke: ClassVar[tuple[str, ...]] = ("apd.steps=4",)
    apd: APDConfig = Field(default_factory=APDConfig, description="APD hyperparameters.")


class L3DExperiment(ToyExperiment):
    """L3D on a toy: which toy, which of its layers, which hyperparameters (experiments/l3d_*.yaml)."""

    kind: Literal["l3d-toy"] = "l3d-toy"
    smoke: ClassVar[tuple[str, ...]] = ("l3d.steps=4",)
    l3d: L3DConfig = Field(default_factory=L3DConfig, description="L3D hyperparameters.")


Scored = tuple[Matrices, Importances]


def relative(scores: Tensor) -> Tensor:
    """Unbounded importances [..., C] as shares of each input's largest one, in [0, 1] (0 for an all-zero input).

    APD's attributions and L3D's coefficients have no fixed scale (they grow with the input and the
    weights), so the thresholds `toy_report` applies to SPD's causal importances (on > 0.5, alive
    > 0.1, counted in CI L0 > 0.01) are applied to these shares instead of the raw values.
    """
    top = scores.amax(dim=-1, keepdim=True)
    return torch.where(top > 0, scores / top.clamp_min(torch.finfo(scores.dtype).tiny), torch.zeros_like(scores))


def _per_target(names: list[str], per_input: Callable[[Tensor], Tensor]) -> Importances:
    return lambda x: dict.fromkeys(names, relative(per_input(x)))


def spd_scored(dec: spd.SPDDecomposition) -> Scored:
    return (lambda n: dec.matrices(n).detach()), dec.importances


def apd_scored(dec: apd.APDDecomposition) -> Scored:
    return (lambda n: dec.matrices(n).detach()), _per_target(list(dec.targets), dec.attributions)


def l3d_scored(dec: l3d.L3DDecomposition) -> Scored:
    return dec.matrices, _per_target(list(dec.targets), lambda x: dec.coefficients(x).abs())


def decompose_toy(exp: ToyExperiment, method: str, cfg: FitConfig, ctx: Context,
                  initial: Callable[[Any, list[str]], Any], fit: Callable[..., Any],
                  scored: Callable[[Any], Scored]) -> Outcome:
    """Score the untrained start, fit (checkpointing into the run folder), score again, plot: one method's run."""
    with distributed.main_first():  # rank 0 trains and caches the toy; the others then load it
        toy = load_toy(exp.toy, seed=exp.toy_seed)
    targets = exp.targets or default_targets(toy)
    start_dec = initial(toy.model, targets)
    names = list(start_dec.targets)
    before = toy_report(toy, names, *scored(start_dec))
    data_gen = torch.Generator(toy.device).manual_seed(cfg.seed + 2)
    start = time.perf_counter()
    dec = fit(toy.model, toy_batches(toy, cfg.batch_size, data_gen), targets, cfg, run_dir=ctx.out,
              resume=ctx.resume, generators={"data": data_gen})
    seconds = time.perf_counter() - start
    after = toy_report(toy, names, *scored(dec))
    plots = write_toy_plots(ctx.out, toy, names, *scored(dec)) if distributed.is_main() else []
    last = dec.history[-1] if dec.history else {}
    is_spd = method == "spd"  # the keys each runner reported before the run kinds, kept so old results compare
    metrics: dict[str, Any] = {
        **({} if is_spd else {"method": method}),
        "toy": exp.toy,
        "seed": cfg.seed,
        "toy_seed": exp.toy_seed,
        "steps": cfg.steps,
        "seconds": round(seconds, 1),
        **({} if is_spd else {"steps_per_s": round(cfg.steps / seconds, 1)}),
        **{k: after[k] for k in HEADLINE if k in after},
        **{f"init_{k}": before[k] for k in HEADLINE if k in before},
        **({"ci_l0": after["ci_l0_total"]} if is_spd else {}),
        **{f"final_{k}": v for k, v in last.items() if k not in ("step", "time_s")},
        "layers": {n: after[n] for n in names if n in after},
        **({"init_layers": {n: before[n] for n in names if n in before}} if is_spd else {}),
        "plots": plots,
        "out": str(ctx.out),
    }
    models, data = toy_records(exp.toy, toy, cfg.steps, cfg.batch_size)
    return Outcome(metrics, _summary(method, exp.toy, metrics), models=models, data=data, access=ACCESS[method],
                   value=dec)


def _summary(method: str, toy: str, m: dict[str, Any]) -> str:
    """'SPD on tms-5-2: MMCS 0.9999 (0.77 at the start), ML2R 1.00, CI L0 2.1; 200 steps in 3.1 s'."""
    parts = [f"MMCS {m['mmcs']:.4f} ({m['init_mmcs']:.2f} at the start)"] if "mmcs" in m else []
    parts += [f"ML2R {m['ml2r']:.3f}"] if "ml2r" in m else []
    parts += [f"CI L0 {m['ci_l0']:.2f}"] if "ci_l0" in m else []
    return f"{method.upper()} on {toy}: {', '.join(parts) or 'no ground-truth layer scored'}; " \
           f"{m['steps']} steps in {m['seconds']} s"


@register(SPDExperiment, trains=True, data_parallel=True)
def spd_toy(exp: SPDExperiment, ctx: Context) -> Outcome:
    """Fit SPD to the toy, save the decomposition in the run folder, and score the start and the end.

    The metrics hold the recovery scores of the initial (untrained) decomposition next to the final
    ones, so a high score that a random start already reaches is visible as such.
    """
    outcome = decompose_toy(exp, "spd", exp.spd, ctx, lambda m, t: spd.initial_decomposition(m, t, exp.spd),
                            spd.decompose, spd_scored)
    if distributed.is_main():
        outcome.value.save(ctx.out)
    return outcome


@register(APDExperiment, trains=True, data_parallel=True)
def apd_toy(exp: APDExperiment, ctx: Context) -> Outcome:
    """Fit APD to the toy and score the start and the end."""
    return decompose_toy(exp, "apd", exp.apd, ctx, lambda m, t: apd.initial_decomposition(m, t, exp.apd),
                         apd.decompose, apd_scored)


@register(L3DExperiment, trains=True, data_parallel=True)
def l3d_toy(exp: L3DExperiment, ctx: Context) -> Outcome:
    """Fit L3D to the toy and score the start and the end (no ML2R: its subnetworks are unit-norm directions)."""
    outcome = decompose_toy(exp, "l3d", exp.l3d, ctx, lambda m, t: l3d.initial_decomposition(m, t, exp.l3d),
                            l3d.decompose, l3d_scored)
    metrics = _without_ml2r(outcome.metrics)
    outcome.metrics, outcome.summary = metrics, _summary("l3d", exp.toy, metrics)
    return outcome


def _without_ml2r(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics without any norm-ratio entry (ml2r, ml2r_rows, their init_/final_ twins), at any depth."""
    return {k: _without_ml2r(v) if isinstance(v, dict) else v for k, v in metrics.items() if "ml2r" not in k}


@torch.no_grad()
def gradient_ceiling(toy: Any, config: L3DConfig, n_samples: int = 4096) -> dict[str, dict[str, float]]:
    """What L3D can reach at best on a toy: per ground-truth layer, the cosine of each mechanism's true piece
    with the top singular direction of the per-sample gradients (L3D's data) of the inputs that use that
    mechanism alone, averaged over mechanisms (`mmcs`) and the worst one (`min_cosine`).

    A mechanism's inputs are the features its first scored layer's piece reads (its nonzero columns). L3D
    reconstructs gradients, so where a gradient does not point along the weight piece (a layer after which the
    output is read through other weights), no subnetwork can match the piece better than this.
    """
    gt = toy.ground_truth
    layers = [n for n in gt.components if n in gt.targets and n not in gt.identity]
    x = toy.sample_batch(n_samples, torch.Generator(toy.device).manual_seed(4321))[0]
    grads = l3d.per_sample_gradients(toy.model, x, find_targets(toy.model, layers), config.divergence,
                                     config.reference)
    alone = used_alone(x, mechanism_inputs(gt))  # [n, mech]
    out: dict[str, dict[str, float]] = {}
    for name in layers:
        g = grads[name].flatten(1)  # [n, d_out·d_in]
        cos = torch.stack([_top_direction_cosine(g[alone[:, m]], gt.components[name][m].flatten())
                           for m in range(alone.shape[1])])
        out[name] = {"mmcs": float(cos.mean()), "min_cosine": float(cos.min())}
    return out


def mechanism_inputs(gt: Any) -> Tensor:
    """Bool [n_mech, n_features]: the inputs each mechanism reads (its first layer piece's nonzero columns; one
    feature each where the toy names no pieces)."""
    layers = [n for n in gt.components if n in gt.targets and n not in gt.identity]
    if not layers:
        return torch.eye(gt.n_features, dtype=torch.bool)
    return gt.components[layers[0]].abs().sum(1) > 0


def used_alone(x: Tensor, reads: Tensor) -> Tensor:
    """Bool [n, n_mech]: input n uses mechanism m and no input outside it is active."""
    active = (x != 0)[:, None, :]
    reads = reads.to(x.device)[None]
    return (active & reads).any(-1) & ~(active & ~reads).any(-1)


def purity(coefficients: Tensor, alone: Tensor) -> dict[str, Any]:
    """How cleanly mechanisms map to subnetworks on inputs that use one mechanism alone.

    `table[m, s]` counts those inputs of mechanism m whose largest |coefficient| is subnetwork s; `purity` is the
    share of them whose subnetwork is the one its mechanism picks most (1: every mechanism always picks one
    subnetwork, and no two share it when `n_distinct` equals the number of mechanisms).
    """
    rows = alone.sum(1) == 1
    top = coefficients[rows].abs().argmax(1)
    mech = alone[rows].float().argmax(1)
    table = torch.zeros(alone.shape[1], coefficients.shape[1], dtype=torch.long)
    table.index_put_((mech.cpu(), top.cpu()), torch.ones_like(top.cpu()), accumulate=True)
    favourite = table.argmax(1)
    return {"purity": float(table.max(1).values.sum() / table.sum().clamp_min(1)),
            "n_distinct": int(favourite.unique().numel()), "table": table.tolist()}


def l3d_checkpoint_purity(run_dir: str | Path, step: int | None = None, n_samples: int = 8192) -> dict[str, Any]:
    """`purity` of an `l3d-toy` run's newest (or given) checkpoint on fresh inputs of its toy."""
    run_dir = Path(run_dir)
    ckpt, step = checkpoint_to_score(run_dir, step)
    exp = L3DExperiment.from_yaml(run_dir / CONFIG)
    toy = load_toy(exp.toy, seed=exp.toy_seed)
    dec = l3d.initial_decomposition(toy.model, exp.targets or default_targets(toy), exp.l3d)
    ckpt.load_model(dec, step)
    x = toy.sample_batch(n_samples, torch.Generator(toy.device).manual_seed(7))[0]
    return {"step": step, **purity(dec.coefficients(x), used_alone(x, mechanism_inputs(toy.ground_truth)))}


def _top_direction_cosine(grads: Tensor, piece: Tensor) -> Tensor:
    """|cos| of the top right singular vector of `grads` [k, p] with `piece` [p] (0 when there are no rows)."""
    if len(grads) == 0:
        return piece.new_zeros(())
    top = torch.linalg.svd(grads.double(), full_matrices=False).Vh[0]
    return (top @ piece.double()).abs() / piece.double().norm().clamp_min(1e-30)


def load_spd_run(run_dir: Path) -> SPDExperiment:
    """The config of an `spd-toy` run folder (config.yaml; experiment.yaml in folders written before the run kinds)."""
    if (run_dir / CONFIG).is_file():
        return SPDExperiment.from_yaml(run_dir / CONFIG)
    old = run_dir / "experiment.yaml"
    if old.is_file():
        return SPDExperiment.parse({**read_yaml_mapping(old), "kind": "spd-toy"}, source=str(old))
    raise AnatomistError(f"{run_dir}: no {CONFIG}; not a run folder of `anatomist spd run`")


def checkpoint_to_score(run_dir: Path, step: int | None) -> tuple[Checkpointer, int]:
    """The run folder's checkpoints and the step to score: `step`, or the newest; an error names what there is."""
    ckpt = Checkpointer(run_dir)
    steps = ckpt.steps()
    if not steps:
        raise AnatomistError(f"{ckpt.dir}: no checkpoint to score")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise AnatomistError(f"{ckpt.dir}: no checkpoint of step {step} (there are: {', '.join(map(str, steps))})")
    return ckpt, step


def score_spd_checkpoint(run_dir: str | Path, step: int | None = None) -> dict[str, Any]:
    """Score the newest (or a given) checkpoint of an `spd-toy` run folder.

    Long schedules (TMS 40-10, the residual MLPs: hours of CPU) can be followed, or judged after
    being stopped, without waiting for the end: the scores are `toy_report`'s, as in metrics.json.
    """
    run_dir = Path(run_dir)
    ckpt, step = checkpoint_to_score(run_dir, step)
    exp = load_spd_run(run_dir)
    toy = load_toy(exp.toy, seed=exp.toy_seed)
    dec = spd.initial_decomposition(toy.model, exp.targets or default_targets(toy), exp.spd)
    ckpt.load_model(dec, step)
    names = list(dec.targets)
    report = toy_report(toy, names, *spd_scored(dec))
    return {
        "toy": exp.toy,
        "step": step,
        **{k: report[k] for k in HEADLINE if k in report},
        "ci_l0": report["ci_l0_total"],
        "layers": {n: report[n] for n in names if n in report},
        "run": str(run_dir),
    }
