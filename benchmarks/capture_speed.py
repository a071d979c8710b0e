"""Early stopping in `capture`: reading SmolLM2's layer 6 against a full forward, in one run.

    python benchmarks/capture_speed.py [--layer 6] [--batches 4]

Prints tokens/s for both and their ratio. Shared machines are noisy: compare the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from anatomist.data import load_corpus
from anatomist.nets import Site, capture, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--batches", type=int, default=4)
    args = parser.parse_args()
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
    print(f"capture {site}: {n / timings['capture']:.1f} tokens/s")
    print(f"full forward with logits: {n / timings['full']:.1f} tokens/s")
    print(f"speed-up: {timings['full'] / timings['capture']:.2f}x")


if __name__ == "__main__":
    main()
