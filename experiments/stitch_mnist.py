"""SAE stitching between the MNIST SAEs of experiments/mdl_mnist.yaml (same k, growing width).

PYTHONPATH=src OMP_NUM_THREADS=1 python experiments/stitch_mnist.py [--k 16] [--widths 64 256 1024 4096]
Prints one line per pair and a markdown table; writes runs/mdl_mnist/stitch_k<k>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from anatomist.core.io import save_json
from anatomist.data import load_images
from anatomist.dictionaries import StitchConfig, stitch_path
from anatomist.features import load_sae


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=Path, default=Path("runs/mdl_mnist"))
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024, 4096])
    ap.add_argument("--threshold", type=float, default=0.7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    x = load_images("mnist").images.flatten(1)
    widths = [w for w in args.widths if (args.runs / f"w{w}_k{args.k}" / "sae").is_dir()]
    out = {}
    for small_w, large_w in zip(widths, widths[1:], strict=False):
        small, large = (load_sae(args.runs / f"w{w}_k{args.k}" / "sae") for w in (small_w, large_w))
        r = stitch_path(small, large, x, StitchConfig.parse({"threshold": args.threshold}))
        name = f"w{small_w}_k{args.k} -> w{large_w}_k{args.k}"
        out[name] = r
        print(name, json.dumps({k: v for k, v in r.items() if k != "path"}), flush=True)
    save_json(args.runs / f"stitch_k{args.k}.json", out)
    print("\n| pair | novel | groups | mean max cos | FVU small | + novel | large | monotone |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in out.items():
        after_novel = [p for p in r["path"] if p["n_groups_swapped"] == 0][-1]
        print(f"| {name} | {r['novel_fraction']:.1%} | {r['n_groups']} | {r['mean_max_cos']:.2f} | "
              f"{r['path'][0]['fvu']:.3f} | {after_novel['fvu']:.3f} | {r['path'][-1]['fvu']:.3f} | {r['monotone']} |")


if __name__ == "__main__":
    main()
