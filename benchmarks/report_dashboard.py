"""Feature-dashboard pass: a dictionary over cached SmolLM2 activations (layer 6, wiki text), timed by phase.

    python benchmarks/report_dashboard.py --sae PATH [--n-seqs 800] [--out /tmp/dash]

800 sequences of 128 tokens = 101,600 rows (BOS left out). The activations are harvested once into the
anatomist activation cache (the model forward, timed separately as `harvest_s`, 0 when cached); `pass_s`
is the streamed pass over the cache (encode + running top-k, histograms, quantile samples), `write_s`
the nearest latents, logit effects and the JSON. Without --sae a randomly initialised TopK SAE
(4096 latents, k 32) stands in: the pass costs the same for any TopK dictionary of that size.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from anatomist.data import load_corpus
from anatomist.features import SAEConfig, load_sae, make_sae
from anatomist.nets.assets import load_model
from anatomist.report.sources import lm_dashboard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sae", default=None)
    parser.add_argument("--n-seqs", type=int, default=800)
    parser.add_argument("--out", default="/tmp/anatomist-dashboard-bench")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sae = load_sae(args.sae) if args.sae else make_sae(SAEConfig(arch="topk", d_in=576, d_sae=4096, k=32))
    start = time.perf_counter()
    lm = load_model("smollm2")
    tokens = load_corpus("wiki").tokenize(lm.tokenizer, seq_len=128, n_seqs=args.n_seqs)
    load_s = time.perf_counter() - start
    t = lm_dashboard(sae, args.out, model_name="smollm2", site="model.layers.6", tokens=tokens, loaded=lm)
    rows = t["rows"]
    print(json.dumps({"latents": sae.cfg.d_sae, "rows": int(rows), "threads": args.threads,
                      "load_s": round(load_s, 1), **{k: round(v, 2) for k, v in t.items() if k != "rows"},
                      "pass_rows_per_s": round(rows / t["pass_s"]), "total_s": round(t["pass_s"] + t["write_s"], 1)}))


if __name__ == "__main__":
    main()
