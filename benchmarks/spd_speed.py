"""SPD speed: anatomist vs the goodfire `spd` reference (branch spd-paper), same toys, same configs, one run.

For each toy (TMS 5-2, TMS 40-10 by default) both implementations decompose the SAME trained toy
with the paper's hyperparameters (experiments/spd_<toy>.yaml), each in a fresh subprocess with the
same torch thread count, side by side (so a busy shared machine slows both alike; `--sequential`
runs them one after the other). Every `--eval-every` steps the worker scores
linear1's subcomponents against the toy's ground truth (the scoring time is not counted) and
records:

* `mmcs` / `min_cosine`: flattened-matrix MMCS and the worst feature's best match (anatomist's
  definition, `anatomist.evaluate.recovery.match`), and
* `mmcs_rows` (`min_cosine_rows`, `ml2r_rows`): the SPD paper's TMS score, the one the reference
  computes (each feature's row of each subcomponent vs W[:, f]), which a random start already
  puts near 0.99.

A run stops when its `--stop-on` score (default the paper's, `mmcs_rows`) has stayed ≥ 0.999 for
`--stable` steps (or at `--steps`, or after `--max-minutes`). Printed per toy: steps/s of each
side, wall time until each score stays ≥ 0.999 (the start of the final streak), and the ratios
reference/anatomist.

    python benchmarks/spd_speed.py --reference /work/peers/spd --threads 1 [--json]

With --json the last line is one JSON object: per toy, each side's summary (`steps_per_s`, `steps_per_cpu_s`,
final scores, time to 0.999) and `ratio_vs_reference` (anatomist's steps/s over the reference's),
`cpu_ratio_vs_reference` (the same per CPU second of each worker: on a shared machine whose load comes and goes,
the figure that load moves least) with the time ratios `time_ratio_vs_reference` (reference's seconds to each
score over anatomist's: > 1, anatomist is there sooner).

The reference is run from its source folder (`--reference`, a checkout of branch spd-paper with
torch, einops, jaxtyping, wandb, tqdm, pydantic importable); without it, only anatomist runs.
Nothing of the reference is imported unless its path is given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from common import machine, main, parser, say

from anatomist.core.threads import torch_threads

ROOT = Path(__file__).resolve().parent.parent
TOY_EXPERIMENT = {"tms-5-2": "spd_tms_5_2.yaml", "tms-40-10": "spd_tms_40_10.yaml"}


def _scorer(toy: Any) -> Callable[[torch.Tensor], dict[str, float]]:
    from anatomist.evaluate.recovery import match
    from anatomist.runs.toy_scoring import rows_match

    truth = toy.ground_truth.components["linear1"]
    W = toy.model.W.detach()

    def score(matrices: torch.Tensor) -> dict[str, float]:
        m = match(truth, matrices)
        return {"mmcs": m.mmcs, "min_cosine": m.worst, "ml2r": m.ml2r, **rows_match(matrices, W)}

    return score


class Recorder:
    """Scores at eval steps, keeps the clock without the scoring time, decides when to stop."""

    def __init__(
        self, score: Callable[[torch.Tensor], dict[str, float]], stable: int, max_seconds: float, key: str
    ) -> None:
        self.score, self.stable, self.max_seconds, self.key = score, stable, max_seconds, key
        self.curve: list[dict[str, float]] = []
        self.restart()
        self.streak_from: int | None = None

    def restart(self) -> None:
        """Zero both clocks: wall time, and this process's CPU time (what a shared machine's load changes least)."""
        self.start, self.paused = time.perf_counter(), 0.0
        self.start_cpu, self.paused_cpu = time.process_time(), 0.0

    def record(self, step: int, matrices: torch.Tensor) -> bool:
        t_in, cpu_in = time.perf_counter(), time.process_time()
        elapsed = t_in - self.start - self.paused
        cpu = cpu_in - self.start_cpu - self.paused_cpu
        row = {"step": step, "time_s": round(elapsed, 3), "cpu_s": round(cpu, 3), **self.score(matrices)}
        self.curve.append(row)
        if row[self.key] >= 0.999:
            self.streak_from = step if self.streak_from is None else self.streak_from
        else:
            self.streak_from = None
        self.paused += time.perf_counter() - t_in
        self.paused_cpu += time.process_time() - cpu_in
        done = self.streak_from is not None and step - self.streak_from >= self.stable
        return done or elapsed > self.max_seconds


def _worker_anatomist(args: argparse.Namespace) -> dict[str, Any]:
    from anatomist.mechanisms import spd
    from anatomist.nets.toys import load_toy
    from anatomist.runs.mechanisms import SPDExperiment
    from anatomist.runs.toy_scoring import default_targets, toy_batches

    exp = SPDExperiment.from_yaml(ROOT / "experiments" / TOY_EXPERIMENT[args.toy])
    cfg = exp.spd.replace(steps=args.steps, log_every=args.eval_every, checkpoint_every=0, seed=args.seed)
    toy = load_toy(exp.toy, seed=exp.toy_seed)
    rec = Recorder(_scorer(toy), args.stable, args.max_minutes * 60, args.stop_on)
    init = spd.initial_decomposition(toy.model, default_targets(toy), cfg)
    rec.record(0, init.matrices("linear1").detach())
    rec.restart()
    data_gen = torch.Generator().manual_seed(args.seed + 2)
    spd.decompose(
        toy.model,
        toy_batches(toy, cfg.batch_size, data_gen),
        default_targets(toy),
        cfg,
        callback=lambda step, dec, row: rec.record(step, dec.matrices("linear1").detach()),
    )
    return {"curve": rec.curve}


def _worker_reference(args: argparse.Namespace) -> dict[str, Any]:
    """Drive the reference's own `optimize` on our trained toy, observing it without changing it."""
    sys.path.insert(0, str(Path(args.reference).resolve()))
    import spd.run_spd as R  # the reference package (goodfire spd, branch spd-paper)
    from spd.configs import Config as RefConfig
    from spd.data_utils import DatasetGeneratedDataLoader, SparseFeatureDataset
    from spd.experiments.tms.models import TMSModel, TMSModelConfig

    from anatomist.nets.toys import load_toy
    from anatomist.runs.mechanisms import SPDExperiment

    exp = SPDExperiment.from_yaml(ROOT / "experiments" / TOY_EXPERIMENT[args.toy])
    cfg = exp.spd
    toy = load_toy(exp.toy, seed=exp.toy_seed)
    tc: Any = toy.config  # a TMS config (n_features, d_hidden, feature_prob)
    target = TMSModel(
        TMSModelConfig(
            n_features=tc.n_features,
            n_hidden=tc.d_hidden,
            n_hidden_layers=0,
            tied_weights=True,
            init_bias_to_zero=False,
            device="cpu",
        )
    )
    with torch.no_grad():
        target.linear1.weight.copy_(toy.model.W)
        target.linear2.bias.copy_(toy.model.b_final)
    target.tie_weights_()
    x = toy.sample_batch(256, torch.Generator().manual_seed(0))[0]
    assert torch.allclose(target(x), toy.model(x), atol=1e-6), "reference TMS does not compute our toy"

    ref_cfg = RefConfig(
        seed=args.seed,
        C=cfg.C,
        n_mask_samples=cfg.n_mask_samples,
        n_ci_mlp_neurons=cfg.d_gate,
        target_module_patterns=["linear1", "linear2"],
        faithfulness_coeff=cfg.faithfulness_coeff,
        stochastic_recon_coeff=cfg.stochastic_recon_coeff,
        stochastic_recon_layerwise_coeff=cfg.stochastic_recon_layerwise_coeff,
        importance_minimality_coeff=cfg.importance_minimality_coeff,
        pnorm=cfg.pnorm,
        output_loss_type="mse",
        lr=cfg.lr,
        steps=args.steps,
        batch_size=cfg.batch_size,
        lr_schedule=cfg.lr_schedule,
        lr_warmup_pct=cfg.lr_warmup,
        n_eval_steps=1,
        image_freq=None,
        print_freq=10 * args.steps,  # its print/eval block runs at step 0 only
        pretrained_model_class="spd.experiments.tms.models.TMSModel",
        task_config={"task_name": "tms", "feature_probability": tc.feature_prob},
    )
    torch.manual_seed(args.seed)
    data = SparseFeatureDataset(tc.n_features, tc.feature_prob, "cpu", "at_least_zero_active", (0.0, 1.0))
    loader = DatasetGeneratedDataLoader(data, batch_size=cfg.batch_size)

    models: list[Any] = []
    original = R.ComponentModel

    class Observed(original):  # type: ignore[misc, valid-type]
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            models.append(self)

    def matrices() -> torch.Tensor:
        comp = models[0].components["linear1"]
        return torch.einsum("ic,co->coi", comp.A.detach(), comp.B.detach())  # [C, d_out, d_in]

    rec = Recorder(_scorer(toy), args.stable, args.max_minutes * 60, args.stop_on)

    def observed_steps(iterable: Any, **_: Any) -> Iterator[int]:
        for step in iterable:
            if step == 1:  # step 0 ran the reference's one-off print/eval block: start the clock here
                rec.restart()
            if step % args.eval_every == 0 and (step > 0 or not rec.curve) and rec.record(step, matrices()):
                return
            yield step

    R.ComponentModel = Observed
    R.tqdm = observed_steps
    R.tqdm.write = lambda *a, **k: None  # type: ignore[attr-defined]
    R.optimize(target, ref_cfg, "cpu", loader, loader, 1, None, None, tied_weights=[("linear1", "linear2")])
    return {"curve": rec.curve}


def summarize(curve: list[dict[str, float]], stable: int) -> dict[str, Any]:
    """steps/s over the run, and when MMCS (and the reference's row score) started staying ≥ 0.999."""
    last = curve[-1]
    out: dict[str, Any] = {"steps": last["step"], "seconds": last["time_s"]}
    out["steps_per_s"] = round(last["step"] / last["time_s"], 3) if last["time_s"] > 0 else None
    out["cpu_s"] = last["cpu_s"]
    out["steps_per_cpu_s"] = round(last["step"] / last["cpu_s"], 3) if last["cpu_s"] > 0 else None
    out["init_mmcs"], out["init_mmcs_rows"] = curve[0]["mmcs"], curve[0]["mmcs_rows"]
    for key in ("mmcs", "min_cosine", "ml2r", "mmcs_rows", "min_cosine_rows", "ml2r_rows"):
        out[f"final_{key}"] = last[key]
    for key in ("mmcs", "mmcs_rows"):
        streak = None
        for row in curve:
            streak = (streak or row) if row[key] >= 0.999 else None
        held = streak is not None and last["step"] - streak["step"] >= stable
        out[f"{key}_0999_step"] = streak["step"] if held and streak else None
        out[f"{key}_0999_s"] = streak["time_s"] if held and streak else None
    return out


def start_worker(kind: str, toy: str, args: argparse.Namespace) -> subprocess.Popen[str]:
    cmd = [sys.executable, __file__, "--worker", kind, "--toy", toy, "--steps", str(args.steps)]
    cmd += ["--eval-every", str(args.eval_every), "--stable", str(args.stable), "--seed", str(args.seed)]
    cmd += ["--threads", str(args.threads), "--max-minutes", str(args.max_minutes), "--stop-on", args.stop_on]
    if args.reference:
        cmd += ["--reference", args.reference]
    # the caller's PYTHONPATH stays after ours (e.g. a folder with the reference's own dependencies)
    path = os.pathsep.join(p for p in [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")] if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(args.threads)}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish_worker(proc: subprocess.Popen[str], kind: str, toy: str) -> list[dict[str, float]]:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed on {toy}:\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])["curve"]


def bench(args: argparse.Namespace) -> dict[str, Any]:
    if not args.reference:
        say("no --reference given: skipping the goodfire spd reference, timing anatomist only")
    results: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    toys: dict[str, Any] = {}
    for toy in args.toys.split(","):
        sides = ["anatomist"] + (["reference"] if args.reference else [])
        results[toy] = {}
        curves: dict[str, list[dict[str, float]]] = {}
        if args.sequential:
            for kind in sides:
                curves[kind] = finish_worker(start_worker(kind, toy, args), kind, toy)
        else:  # side by side: a busy shared machine then slows both alike
            procs = {kind: start_worker(kind, toy, args) for kind in sides}
            curves = {kind: finish_worker(proc, kind, toy) for kind, proc in procs.items()}
        for kind in sides:
            curve = curves[kind]
            results[toy][kind] = {**summarize(curve, args.stable), "curve": curve}
            s = results[toy][kind]
            say(
                f"{toy:10s} {kind:9s} {s['steps_per_s']} steps/s ({s['steps_per_cpu_s']} per CPU second), "
                f"{s['steps']} steps; paper's MMCS (rows) "
                f"{s['init_mmcs_rows']:.4f} -> {s['final_mmcs_rows']:.5f} (worst {s['final_min_cosine_rows']:.4f}, "
                f"ML2R {s['final_ml2r_rows']:.3f}), stays ≥ 0.999 from {s['mmcs_rows_0999_s']} s "
                f"(step {s['mmcs_rows_0999_step']}); flattened MMCS {s['init_mmcs']:.4f} -> {s['final_mmcs']:.4f} "
                f"(worst {s['final_min_cosine']:.4f}, ML2R {s['final_ml2r']:.3f}), stays ≥ 0.999 from "
                f"{s['mmcs_0999_s']} s (step {s['mmcs_0999_step']})"
            )
        toys[toy] = {kind: {k: v for k, v in results[toy][kind].items() if k != "curve"} for kind in sides}
        if args.reference:
            toys[toy] |= ratios(results[toy]["anatomist"], results[toy]["reference"])
            results[toy]["ratio_anatomist_over_reference"] = toys[toy]
            say(f"{toy:10s} speed-up: {toys[toy]['ratio_vs_reference']}x steps/s, "
                f"{toys[toy]['cpu_ratio_vs_reference']}x steps per CPU second; "
                f"time to 0.999: {toys[toy]['time_ratio_vs_reference']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    return {"benchmark": "spd_speed", "toys": toys}


def ratios(a: dict[str, Any], r: dict[str, Any]) -> dict[str, Any]:
    """anatomist (a) against the reference (r): speed ratio, and the reference's time to each score over ours."""
    speed = a["steps_per_s"] / r["steps_per_s"] if a["steps_per_s"] and r["steps_per_s"] else None
    cpu = a["steps_per_cpu_s"] / r["steps_per_cpu_s"] if a["steps_per_cpu_s"] and r["steps_per_cpu_s"] else None
    times = {key: r[key] / a[key] if a[key] and r[key] else None for key in ("mmcs_0999_s", "mmcs_rows_0999_s")}
    return {"ratio_vs_reference": speed and round(speed, 3), "cpu_ratio_vs_reference": cpu and round(cpu, 3),
            "time_ratio_vs_reference": times}


if __name__ == "__main__":
    p = parser(__doc__, threads=1)
    p.add_argument("--toys", default="tms-5-2,tms-40-10")
    p.add_argument("--steps", type=int, default=40_000, help="schedule length (the paper's 40k)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--stable", type=int, default=2000, help="steps the --stop-on score must stay ≥ 0.999 to stop")
    p.add_argument(
        "--stop-on", choices=["mmcs", "mmcs_rows"], default="mmcs_rows", help="the paper's score, or flattened MMCS"
    )
    p.add_argument("--max-minutes", type=float, default=30.0, help="per run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", default=None, help="path of a goodfire spd checkout (branch spd-paper)")
    p.add_argument("--sequential", action="store_true", help="run the two sides one after the other, not together")
    p.add_argument("--out", default=None, help="write all curves and summaries to this JSON file")
    p.add_argument("--worker", choices=["anatomist", "reference"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--toy", default=None, help=argparse.SUPPRESS)
    known, _ = p.parse_known_args()
    if known.worker:  # a side's subprocess: its curve as the last line, for finish_worker
        with torch_threads(known.threads):
            print(json.dumps((_worker_anatomist if known.worker == "anatomist" else _worker_reference)(known)))
    else:
        main(p, bench)

