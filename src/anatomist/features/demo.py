"""The demo's SAE step: a short TopK SAE on SmolLM2's residual stream, harvested once, then evaluated spliced in.

A smaller cut of experiments/smollm2_resid_topk.yaml sized for the demo: ~20k training tokens (harvested into the
activation cache on the first run, read from disk afterwards), a few hundred steps, CE measured on a few held-out
sequences.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from anatomist.features.train import TrainConfig

DEMO_CONFIG: dict[str, Any] = {
    "model": "smollm2",
    "site": "model.layers.6",
    "data": {"corpus": "wiki", "seq_len": 128, "n_seqs": 160, "eval_seqs": 8, "block_seqs": 32, "cache": "auto"},
    "sae": {"arch": "topk", "d_in": 576, "d_sae": 2048, "k": 32},
    "steps": 250,
    "batch_size": 1024,
    "lr": 2e-3,
    "warmup_steps": 25,
    "decay_frac": 0.3,
    "dead_tokens": 100_000,
    "log_every": 25,
    "eval_every": 125,
    "checkpoint_every": 125,
    "eval_ce_seqs": 4,
}


def sae_step(run_dir: Path) -> dict[str, Any]:
    """Train + evaluate the demo SAE; numbers for the demo's metrics.json."""
    from anatomist.features.train import train_sae

    cfg = TrainConfig.parse({**DEMO_CONFIG, "out_dir": str(run_dir / "sae_smollm2")}, source="sae demo config")
    start = time.perf_counter()
    _, m = train_sae(cfg)
    keys = ("fvu", "l0", "cosine", "dead_fraction", "ce_clean", "ce_spliced", "ce_increase", "kl", "loss_recovered")
    return {
        "site": cfg.site,
        "d_sae": cfg.sae.d_sae,
        "k": cfg.sae.k,
        "train_tokens": int(cfg.data.n_seqs * (cfg.data.seq_len - 1)),
        **{k: round(float(m[k]), 4) for k in keys},
        "seconds": round(time.perf_counter() - start, 1),
        "saved": str(Path(cfg.out_dir) / "sae"),
    }
