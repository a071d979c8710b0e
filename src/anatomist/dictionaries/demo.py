"""The demo's dictionary-science step, on scikit-learn's 8x8 digits (seconds on a CPU).

Two TopK SAEs (32 and 128 latents) on the 1,797 digits: their description length in bits, the stitching path
from the narrow to the wide one, and a meta-SAE on the wide one's decoder rows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def step(run_dir: Path) -> dict[str, Any]:
    """Numbers for the demo's metrics.json; the frontier plot goes into the run folder."""
    from anatomist.data import load_images
    from anatomist.dictionaries import (
        MDLConfig,
        MetaConfig,
        decompose,
        description_length,
        fit_rows,
        plot_frontier,
        stitch_path,
        train_meta_sae,
    )
    from anatomist.features import SAEConfig

    start = time.perf_counter()
    x = load_images("digits").images.flatten(1)  # [1797, 64]
    saes = {w: fit_rows(x, SAEConfig.parse({"arch": "topk", "d_in": 64, "d_sae": w, "k": 8}), steps=300, seed=0)
            for w in (32, 128)}
    mdl = [description_length(s, x, MDLConfig.parse({"fvu_tolerance": 0.3})) for s in saes.values()]
    plot_frontier(mdl, ["w32_k8", "w128_k8"], str(run_dir / "dictionaries_mdl_frontier.png"), title="8x8 digits")
    stitched = stitch_path(saes[32], saes[128], x)
    meta = decompose(saes[128], train_meta_sae(saes[128], MetaConfig.parse({"d_meta": 16, "k": 2, "steps": 300})))
    return {
        "bits_per_input_w32": round(mdl[0]["code_bits_per_input"], 2),
        "bits_per_input_w128": round(mdl[1]["code_bits_per_input"], 2),
        "fvu_w32": round(mdl[0]["fvu"], 4),
        "fvu_w128": round(mdl[1]["fvu"], 4),
        "stitch_novel_fraction": round(stitched["novel_fraction"], 4),
        "stitch_mse_monotone": stitched["monotone"],
        "meta_explained_variance": round(meta.explained_variance, 4),
        "seconds": round(time.perf_counter() - start, 1),
    }

