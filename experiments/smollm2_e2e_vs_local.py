"""Run the e2e-vs-local comparison of experiments/smollm2_e2e_vs_local.yaml and print its table.

Each run is an ordinary `sae-train` run in <out_dir>/<name> (so a killed comparison resumes where it stopped);
all are evaluated on the same held-out sequences. Results go to <out_dir>/results.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from anatomist.core import AnatomistError
from anatomist.core.io import load_json, save_json
from anatomist.runs import parse_run_config, run
from anatomist.runs.base import CONFIG

COLUMNS = ("l0", "ce_increase", "kl", "loss_recovered", "fvu", "dead_fraction")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", type=Path)
    ap.add_argument("--only", nargs="*", help="run only these names")
    args = ap.parse_args()
    spec = yaml.safe_load(args.config.read_text())
    if not isinstance(spec, dict) or not {"base", "runs", "out_dir"} <= spec.keys():
        raise AnatomistError(f"{args.config}: needs keys base, runs, out_dir")
    out = Path(spec["out_dir"])
    results: dict[str, dict[str, Any]] = load_json(out / "results.json") if (out / "results.json").is_file() else {}
    for name, overrides in spec["runs"].items():
        if args.only and name not in args.only:
            continue
        cfg = parse_run_config({"kind": "sae-train", **spec["base"], **overrides}, source=f"runs.{name}")
        metrics = run(cfg, out / name, resume=(out / name / CONFIG).is_file()).metrics
        results[name] = {"objective": cfg.objective, "k": cfg.sae.k, "steps": cfg.steps,
                         **{c: metrics.get(c) for c in (*COLUMNS, "ce_clean", "ce_zero")}}
        save_json(out / "results.json", results)
        print(name, json.dumps(results[name]), flush=True)
    print("\n| run | objective | L0 | CE increase | KL | loss recovered | FVU | dead |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in sorted(results.items(), key=lambda kv: list(spec["runs"]).index(kv[0])):
        print(f"| {name} | {r['objective']} | {r['l0']:.1f} | {r['ce_increase']:+.4f} | {r['kl']:.4f} | "
              f"{r['loss_recovered']:.4f} | {r['fvu']:.3f} | {r['dead_fraction']:.3f} |")


if __name__ == "__main__":
    main()
