"""The demo's dashboard step: the feature dashboard of the demo's SmolLM2 SAE, over its cached training tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def dashboard_step(run_dir: Path) -> dict[str, Any]:
    """Dashboard of run_dir/sae_smollm2/sae (the `sae` step) over the same ~20k tokens it was trained on."""
    from anatomist.core.errors import AnatomistError
    from anatomist.core.io import load_json
    from anatomist.data import load_corpus
    from anatomist.features.formats import load_sae
    from anatomist.nets.assets import load_model
    from anatomist.report.sources import lm_dashboard
    from anatomist.runs.features import DEMO_CONFIG

    sae_dir = Path(run_dir) / "sae_smollm2" / "sae"
    if not sae_dir.is_dir():
        raise AnatomistError(f"{sae_dir}: missing; the dashboard step needs the demo's `sae` step first")
    sae = load_sae(sae_dir)
    data = DEMO_CONFIG["data"]
    lm = load_model(DEMO_CONFIG["model"])
    # the SAE step's training tokens (its held-out ones come after them), so the cached activations are reused
    tokens = load_corpus(data["corpus"]).tokenize(lm.tokenizer, data["seq_len"], data["n_seqs"] + data["eval_seqs"])
    tokens = tokens[: data["n_seqs"]]
    out = Path(run_dir) / "sae_smollm2" / "dashboard"
    t = lm_dashboard(sae, out, model_name=DEMO_CONFIG["model"], site=DEMO_CONFIG["site"], tokens=tokens, loaded=lm,
                     block_seqs=data["block_seqs"])
    index = load_json(out / "dashboard.json")
    density = index["latents"]["density"]
    return {
        "latents": sae.cfg.d_sae,
        "tokens": int(t["rows"]),
        "never_fired": sum(1 for d in density if not d),
        "harvest_s": round(t["harvest_s"], 1),
        "pass_s": round(t["pass_s"], 2),
        "write_s": round(t["write_s"], 1),
        "dashboard": str(out),
    }


MNIST_CONFIG: dict[str, Any] = {
    "model": "mnist-cnn",
    "site": "classifier.relu3",  # the 128 ReLU units after fc1
    "data": {"cache": "auto", "eval_seqs": 500, "block_seqs": 500, "buffer_rows": 4500, "model_batch_size": 500},
    "sae": {"arch": "topk", "d_in": 128, "d_sae": 256, "k": 8},
    "steps": 300,
    "batch_size": 256,
    "lr": 3e-3,
    "log_every": 50,
    "eval_every": 150,
    "checkpoint_every": 300,
}


def mnist_step(run_dir: Path) -> dict[str, Any]:
    """A small TopK SAE on the MNIST CNN's fc1 units, and its dashboard of top-activating digits."""
    from anatomist.data import load_images
    from anatomist.features.train import TrainConfig, train_sae
    from anatomist.nets.assets import load_model
    from anatomist.report.sources import image_dashboard

    out = Path(run_dir) / "sae_mnist"
    cfg = TrainConfig.parse(MNIST_CONFIG, source="mnist dashboard config")
    cnn = load_model("mnist-cnn")
    # [5000, 1, 28, 28] in [0, 1], shuffled so the held-out last rows are all digits, not all nines
    images = load_images("mnist").shuffled(seed=0).images
    sae, m = train_sae(cfg, out, cnn.model, images)
    image_dashboard(sae, out / "dashboard", model=cnn.model, site=cfg.site, images=images,
                    meta={"model": "mnist-cnn", "images": "mnist (5,000 digits)"})
    return {"fvu": round(float(m["fvu"]), 4), "l0": round(float(m["l0"]), 2), "dashboard": str(out / "dashboard")}
