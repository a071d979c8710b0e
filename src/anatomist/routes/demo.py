"""The routes lens's step of `anatomist demo`: a short-trained tiny MoE LM, analysed on held-out text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# a shorter run than the toy's default (800 steps), so the step stays near a minute on 2 CPU cores;
# it is cached by its config hash like any toy
DEMO_STEPS, DEMO_SEQS = 200, 64


def routes_step(run_dir: Path) -> dict[str, Any]:
    """Train (or load) the tiny MoE LM for DEMO_STEPS steps and run the routes analysis on held-out rows."""
    from anatomist.nets.toys import load_toy
    from anatomist.nets.toys.moe_lm import MoELMConfig, held_out
    from anatomist.routes.experiment import AnalyzeConfig, analyze, summary

    toy = load_toy("moe-lm", steps=DEMO_STEPS)
    assert isinstance(toy.config, MoELMConfig)
    ids, label_ids, tokenizer = held_out(toy.config, DEMO_SEQS)
    out = run_dir / "routes"
    cfg = AnalyzeConfig(probe_tokens=2000, max_clusters=128)
    numbers = summary(analyze(toy.model, ids, tokenizer, out, cfg, label_ids=label_ids))
    keep = (
        "n_paths",
        "path_entropy_bits",
        "stability_control_cos",
        "stability_control_cos_random_subspaces",
        "stability_content_cos",
        "probe_token_control",
        "probe_token_content",
        "probe_next_expert_control",
        "probe_next_expert_content",
        "mono_token_expert",
        "mono_token_path",
    )
    return {
        "steps": DEMO_STEPS,
        "test_loss": round(toy.final_loss, 3),
        "unigram_loss": round(toy.metrics["unigram_loss"], 3),
        "from_cache": toy.from_cache,
        **{k: round(float(numbers[k]), 3) for k in keep},
        "plots": [f"routes/{p.name}" for p in sorted(out.glob("*.png"))],
    }
