"""Harvest throughput on SmolLM2 and its overhead over a bare forward to the same layer.

    python benchmarks/harvest_speed.py [--layer 6] [--seqs 64] [--repeats 3] [--threads 1] [--json]

Three ways to get block `layer`'s output for the same token batches, interleaved in one process so that all
three see the same machine load:
  bare     the model truncated to blocks 0..layer (no hooks at all): the floor
  capture  anatomist.capture(..., stop_early=True): hooks plus the early stop
  harvest  ActivationStore.harvest() into a fresh disk cache: capture + BOS masking + safetensors shards + manifest
Prints tokens/s (median wall time over repeats) and the overheads of capture and harvest over bare, measured
in process CPU time (one thread): on a shared, oversubscribed machine wall time swings with other people's load
by more than the overhead being measured, CPU time much less. `tokens_per_s` is the harvest's; `share_of_bound`
is bare / harvest in CPU time (the bare forward is the least work a harvest needs).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

import torch
from common import main, parser, say
from torch import nn

from anatomist import capture
from anatomist.data import load_corpus
from anatomist.data.store import ActivationStore
from anatomist.nets.assets import load_model


def bench(args: argparse.Namespace) -> dict[str, Any]:
    loaded = load_model("smollm2")
    model = loaded.model
    ids = load_corpus("wiki").tokenize(loaded.tokenizer, args.seq_len, args.seqs)
    site = f"model.layers.{args.layer}"
    tokens = ids.numel()
    body, layers = model.model, model.model.layers

    def bare() -> None:
        body.layers = nn.ModuleList(list(layers)[: args.layer + 1])  # the same blocks, nothing after them
        try:
            with torch.no_grad():
                for start in range(0, len(ids), args.batch):
                    body(ids[start : start + args.batch])
        finally:
            body.layers = layers

    def hooked() -> None:
        for start in range(0, len(ids), args.batch):
            capture(model, ids[start : start + args.batch], [site])

    def harvest() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            ActivationStore(model, ids, [site], exclude_bos=True, block_seqs=32, model_batch_size=args.batch,
                            cache=tmp, model_name="smollm2").harvest()

    runs: dict[str, list[float]] = {"bare": [], "capture": [], "harvest": []}
    cpu: dict[str, list[float]] = {"bare": [], "capture": [], "harvest": []}
    fns = [("bare", bare), ("capture", hooked), ("harvest", harvest)]
    bare()  # warm-up
    for r in range(args.repeats):
        for name, fn in fns[r % 3 :] + fns[: r % 3]:  # rotate the order: drifts in load hit all three alike
            t, c = time.perf_counter(), time.process_time()
            fn()
            runs[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    med = {k: statistics.median(v) for k, v in runs.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    for k in runs:
        say(f"{k:8s} {tokens / med[k]:10.1f} tokens/s   {tokens / med_cpu[k]:10.1f} tokens per CPU second")
    return {
        "benchmark": "harvest_speed", "tokens": tokens, "layer": args.layer,
        "tokens_per_s": round(tokens / med["harvest"], 1),
        "share_of_bound": round(med_cpu["bare"] / med_cpu["harvest"], 4),
        **{f"{k}_tokens_per_s": round(tokens / v, 1) for k, v in med.items() if k != "harvest"},
        **{f"{k}_tokens_per_cpu_s": round(tokens / v, 1) for k, v in med_cpu.items()},
        "capture_overhead_cpu": round(med_cpu["capture"] / med_cpu["bare"] - 1, 4),
        "harvest_overhead_cpu": round(med_cpu["harvest"] / med_cpu["bare"] - 1, 4),
        "harvest_overhead_wall": round(med["harvest"] / med["bare"] - 1, 4),
        "wall_seconds": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "cpu_seconds": {k: [round(x, 2) for x in v] for k, v in cpu.items()},
    }


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--layer", type=int, default=6)
    p.add_argument("--seqs", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    main(p, bench)
