"""Feature-dashboard pass: a dictionary over cached SmolLM2 activations (layer 6, wiki text), timed by phase.

    python benchmarks/report_dashboard.py --sae PATH [--n-seqs 800] [--out /tmp/dash] [--json]

800 sequences of 128 tokens = 101,600 rows (BOS left out). The activations are harvested once into the
anatomist activation cache (the model forward, timed separately as `harvest_s`, 0 when cached); `pass_s`
is the streamed pass over the cache (encode + running top-k, histograms, quantile samples), `write_s`
the nearest latents, logit effects and the JSON. Without --sae a randomly initialised TopK SAE
(4096 latents, k 32) stands in: the pass costs the same for any TopK dictionary of that size.
`tokens_per_s` is the pass's rows per second; `share_of_bound` is encode-only time / pass time (reading and
encoding the cached blocks is the least work the pass needs). The pass is `lm_dashboard`, the library
function the `dashboard` run kind wraps.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from common import main, parser, say

from anatomist.core.paths import cache_dir
from anatomist.data import load_corpus
from anatomist.data.store import ActivationStore
from anatomist.features import SAEConfig, load_sae, make_sae
from anatomist.nets.assets import load_model
from anatomist.nets.sites import Site
from anatomist.report.sources import lm_dashboard


def encode_only(sae: torch.nn.Module, tokens: torch.Tensor, model: torch.nn.Module) -> float:
    """The same cached blocks read and encoded, no statistics: what the pass costs beyond the SAE itself."""
    site = Site.parse("model.layers.6")
    args: dict[str, Any] = dict(exclude_bos=True, block_seqs=32, model_name="smollm2")
    fingerprint = ActivationStore(model, tokens, [site], **args).fingerprint()
    folder = cache_dir("activations") / f"smollm2-{site.module}-{fingerprint}"
    store = ActivationStore(model, tokens, [site], cache=folder, **args)
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(store.n_blocks):
            sae.encode(store.block(i)[site].float())  # type: ignore[operator]
    return time.perf_counter() - start


def bench(args: argparse.Namespace) -> dict[str, Any]:
    sae = load_sae(args.sae) if args.sae else make_sae(SAEConfig(arch="topk", d_in=576, d_sae=4096, k=32))
    start = time.perf_counter()
    lm = load_model("smollm2")
    tokens = load_corpus("wiki").tokenize(lm.tokenizer, seq_len=128, n_seqs=args.n_seqs)
    load_s = time.perf_counter() - start
    t = lm_dashboard(sae, args.out, model_name="smollm2", site="model.layers.6", tokens=tokens, loaded=lm)
    rows = t["rows"]
    t["encode_only_s"] = encode_only(sae, tokens, lm.model)
    say(f"{sae.cfg.d_sae} latents over {int(rows):,} rows: pass {t['pass_s']:.2f} s "
        f"({rows / t['pass_s']:,.0f} rows/s), "
        f"encode only {t['encode_only_s']:.2f} s, write {t['write_s']:.2f} s, harvest {t['harvest_s']:.1f} s")
    return {"benchmark": "report_dashboard", "latents": sae.cfg.d_sae, "rows": int(rows),
            "tokens_per_s": round(rows / t["pass_s"]), "share_of_bound": round(t["encode_only_s"] / t["pass_s"], 3),
            "load_s": round(load_s, 1), **{k: round(v, 2) for k, v in t.items() if k != "rows"},
            "total_s": round(t["pass_s"] + t["write_s"], 1)}


if __name__ == "__main__":
    p = parser(__doc__, threads=1)
    p.add_argument("--sae", default=None)
    p.add_argument("--n-seqs", type=int, default=800)
    p.add_argument("--out", default="/tmp/anatomist-dashboard-bench")
    main(p, bench)
