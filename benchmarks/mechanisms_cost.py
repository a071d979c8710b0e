"""Cost per step of SPD, APD and L3D on one toy, each with its experiment config, in one process.

Each method fits the SAME trained toy with its own paper settings (experiments/<method>_<toy>.yaml:
batch size, C, ...) for `--round` steps; the methods take turns for `--rounds` rounds, so a busy
shared machine slows all of them alike. Printed: median steps/s per method, samples/s, and
`ratio_vs_spd` (its steps/s over SPD's; < 1: a step costs more than SPD's); the top-level `steps_per_s`
is SPD's. Time to recovery needs the full runs (`anatomist <method> run --config ...`, `seconds` in their
metrics.json); see docs/reproductions.md.

    python benchmarks/mechanisms_cost.py --toy tms-5-2 --threads 1 --rounds 3 --round 100 [--json]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from common import main, parser, say

from anatomist.mechanisms import apd, l3d, spd
from anatomist.nets.toys import load_toy
from anatomist.runs.mechanisms import APDExperiment, L3DExperiment, SPDExperiment
from anatomist.runs.toy_scoring import ToyExperiment, default_targets, toy_batches

ROOT = Path(__file__).resolve().parent.parent


def _fitters(toy_name: str) -> dict[str, tuple[int, Any]]:
    """method -> (batch size, fit(steps) function) with the method's experiment config for this toy."""
    stem = toy_name.replace("-", "_")
    toy = load_toy(toy_name)
    targets = default_targets(toy)
    out: dict[str, tuple[int, Any]] = {}
    methods: list[tuple[str, type[ToyExperiment], Any]] = [
        ("spd", SPDExperiment, spd),
        ("apd", APDExperiment, apd),
        ("l3d", L3DExperiment, l3d),
    ]
    for method, exp_cls, module in methods:
        path = ROOT / "experiments" / f"{method}_{stem}.yaml"
        if not path.is_file():
            continue
        cfg = getattr(exp_cls.from_yaml(path), method)

        def fit(steps: int, cfg: Any = cfg, module: Any = module) -> None:
            g = torch.Generator().manual_seed(0)
            module.decompose(toy.model, toy_batches(toy, cfg.batch_size, g), targets, cfg.replace(steps=steps))

        out[method] = (cfg.batch_size, fit)
    return out


def bench(args: argparse.Namespace) -> dict[str, Any]:
    fitters = _fitters(args.toy)
    for _, fit in fitters.values():
        fit(5)  # warm-up: first-call costs (allocations, torch.func) out of the timings
    rates: dict[str, list[float]] = {m: [] for m in fitters}
    for _ in range(args.rounds):
        for method, (_, fit) in fitters.items():
            t0 = time.perf_counter()
            fit(args.round)
            rates[method].append(args.round / (time.perf_counter() - t0))
    median = {m: statistics.median(r) for m, r in rates.items()}
    spd_rate = median.get("spd")
    say(f"{args.toy}, {args.rounds} rounds × {args.round} steps")
    methods: dict[str, dict[str, float]] = {}
    for method, (batch, _) in fitters.items():
        r = median[method]
        methods[method] = {"steps_per_s": round(r, 2), "samples_per_s": round(r * batch), "batch": batch}
        if spd_rate:
            methods[method]["ratio_vs_spd"] = round(r / spd_rate, 3)
        ratio = f"  {spd_rate / r:5.2f}× SPD's time per step" if spd_rate else ""
        say(f"  {method}: {r:7.1f} steps/s  (batch {batch}: {r * batch:9.0f} samples/s){ratio}")
    head = {"steps_per_s": round(spd_rate, 2)} if spd_rate else {}
    return {"benchmark": "mechanisms_cost", "toy": args.toy, **head, "methods": methods}


if __name__ == "__main__":
    p = parser(__doc__.split("\n\n")[0], threads=1)
    p.add_argument("--toy", default="tms-5-2")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--round", type=int, default=100, help="steps per method per round")
    main(p, bench)
