"""A tiny stand-in for an SAE sweep, as the `dictsci` kind reads one: `<runs_dir>/<name>/sae` (with the
run's config.yaml, for its seed) and the activation cache the SAEs were trained on."""

from __future__ import annotations

from pathlib import Path

import yaml

from anatomist.data import load_corpus
from anatomist.data.store import ActivationStore
from anatomist.dictionaries import fit_rows
from anatomist.features import SAEConfig, save_sae
from anatomist.nets.assets import load_model
from anatomist.runs.dictionaries import load_rows


def make_fake_sweep(root: Path, model: str, site: str, seq_len: int, n_seqs: int,
                    saes: dict[str, tuple[int, int, int]], steps: int = 20) -> tuple[Path, Path]:
    """Harvest `site` of `model` on the first `n_seqs` wiki sequences (BOS left out) into a cache and train a
    TopK SAE on it for every name -> (width, k, seed). Returns (runs_dir, cache)."""
    loaded = load_model(model)
    ids = load_corpus("wiki").tokenize(loaded.tokenizer, seq_len, n_seqs)
    cache = root / "cache"
    ActivationStore(loaded.model, ids, [site], exclude_bos=True, cache=cache, block_seqs=2).harvest()
    x = load_rows(None, cache, 1_000_000)  # [n_seqs * (seq_len - 1), d]
    for name, (width, k, seed) in saes.items():
        cfg = SAEConfig.parse({"arch": "topk", "d_in": x.shape[1], "d_sae": width, "k": k})
        save_sae(fit_rows(x, cfg, steps=steps, batch_size=32, lr=1e-2, seed=seed), root / name / "sae")
        (root / name / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
    return root, cache
