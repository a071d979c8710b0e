"""What every benchmark shares: `--json` and `--threads`, the machine it ran on, the one JSON object it prints last.

With `--json` a script prints exactly one JSON object on stdout, last (its progress lines go to stderr);
without it, lines for a person. The same figure has the same name in every script:

    tokens_per_s     tokens (activation rows) per second of the thing measured
    steps_per_s      optimizer steps per second
    ratio_vs_<peer>  our speed / the peer's speed (> 1: we are faster), e.g. ratio_vs_sparsify,
                     ratio_vs_saelens, ratio_vs_reference
    share_of_bound   our speed / the speed of the least work the task needs (≤ 1)

and every object carries `machine` (CPU model, cores, the SIMD flags present), `torch` and `threads`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from anatomist.core.threads import torch_threads

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
_json_mode = False


def machine() -> dict[str, Any]:
    """CPU model, core count and which of FLAGS the CPU has (from /proc/cpuinfo; empty where it is absent)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    present = set(fields.get("flags", "").split())
    return {"cpu": fields.get("model name", ""), "cores": os.cpu_count(), "flags": [f for f in FLAGS if f in present]}


def cpu_has_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & set(machine()["flags"]))


def parser(description: str | None, threads: int = 0) -> argparse.ArgumentParser:
    """An argument parser with the shared `--json` and `--threads` options."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object last (progress goes to stderr)")
    p.add_argument("--threads", type=int, default=threads, help="torch CPU threads (0: torch's default)")
    return p


def say(text: str) -> None:
    """A line for a person: stdout, or stderr under --json so that stdout holds only the JSON object."""
    print(text, file=sys.stderr if _json_mode else sys.stdout, flush=True)


def main(p: argparse.ArgumentParser, bench: Callable[[argparse.Namespace], dict[str, Any]]) -> None:
    """Parse the flags, run `bench` under the thread setting, and print its figures (one JSON object with --json)."""
    global _json_mode
    args = p.parse_args()
    _json_mode = args.json
    with torch_threads(args.threads):
        figures = bench(args)
        threads = torch.get_num_threads()
    record = {**figures, "threads": threads, "torch": torch.__version__, "machine": machine()}
    if args.json:
        print(json.dumps(record, default=str))
        return
    for key, value in figures.items():
        if not isinstance(value, dict | list):
            print(f"{key}: {value}")
