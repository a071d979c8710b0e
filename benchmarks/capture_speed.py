"""Early stopping in `capture`: reading SmolLM2's layer 6 against a full forward, in one run.

    python benchmarks/capture_speed.py [--layer 6] [--batches 4] [--threads N] [--json]

Prints tokens/s for both and their ratio (`ratio_vs_full_forward`). Shared machines are noisy: compare the ratio.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from common import main, parser, say

from anatomist.data import load_corpus
from anatomist.nets import Site, capture, load_model


def bench(args: argparse.Namespace) -> dict[str, Any]:
    lm = load_model("smollm2")
    tokens = load_corpus("wiki").tokenize(lm.tokenizer, seq_len=128, n_seqs=8 * args.batches)
    site = Site(f"model.layers.{args.layer}")
    batches = tokens.split(8)
    capture(lm.model, batches[0], site)  # warm-up
    timings: dict[str, float] = {"capture": 0.0, "full": 0.0}
    for batch in batches:  # interleaved, so both see the same machine load
        start = time.perf_counter()
        capture(lm.model, batch, site)
        timings["capture"] += time.perf_counter() - start
        start = time.perf_counter()
        with torch.no_grad():
            lm.model(batch)
        timings["full"] += time.perf_counter() - start
    n = tokens.numel()
    say(f"capture {site}: {n / timings['capture']:.1f} tokens/s")
    say(f"full forward with logits: {n / timings['full']:.1f} tokens/s")
    say(f"speed-up: {timings['full'] / timings['capture']:.2f}x")
    return {"benchmark": "capture_speed", "site": str(site), "tokens": n,
            "tokens_per_s": round(n / timings["capture"], 1),
            "full_forward_tokens_per_s": round(n / timings["full"], 1),
            "ratio_vs_full_forward": round(timings["full"] / timings["capture"], 3)}


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--layer", type=int, default=6)
    p.add_argument("--batches", type=int, default=4)
    main(p, bench)
