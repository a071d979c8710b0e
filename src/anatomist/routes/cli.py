"""`anatomist routes ...`: MoE routing as control."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from anatomist.core.errors import AnatomistError

routes_app = typer.Typer(
    help="MoE routing as control: control/content split, expert paths, probes.", no_args_is_help=True
)

ModelArg = Annotated[str, typer.Argument(help="'moe-lm' (the tiny MoE LM toy) or a local Hugging Face MoE folder")]


def _band(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        raise AnatomistError(f"--band: expected comma-separated MoE layer indices like '0,1,2', got '{text}'") from None


@routes_app.command()
def layers(
    model: ModelArg = "moe-lm",
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """List a model's MoE layers: block, router, experts, top-k and the router's rank."""
    from anatomist.routes.control import find_moe_layers, router_basis
    from anatomist.routes.experiment import load_moe_model

    rows = [
        {
            "block": lay.name,
            "router": lay.router_name,
            "n_experts": lay.n_experts,
            "top_k": lay.top_k,
            "d_model": lay.d_model,
            "router_rank": len(router_basis(lay)),
        }
        for lay in find_moe_layers(load_moe_model(model))
    ]
    if as_json:
        print(json.dumps({"model": model, "layers": rows}))
        return
    for r in rows:
        experts = f"{r['n_experts']} experts, top-{r['top_k']}, rank {r['router_rank']}"
        print(f"{r['block']:28s} router {r['router']}  {experts}")


@routes_app.command()
def analyze(
    model: ModelArg = "moe-lm",
    out: Annotated[Path, typer.Option(help="output folder (results.json and plots)")] = Path("runs/routes"),
    n_seqs: Annotated[int, typer.Option(help="held-out wiki sequences to analyse")] = 256,
    band: Annotated[
        str | None, typer.Option(help="MoE layer indices of the band, e.g. '0,1,2,3' (default: all)")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML of AnalyzeConfig fields (flags override it)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object (the headline numbers)")] = False,
) -> None:
    """Paths, cross-layer stability, probes and monosemanticity of paths vs experts on held-out wiki text."""
    from anatomist.routes.experiment import AnalyzeConfig, analyze, load_subject, summary

    cfg = AnalyzeConfig.from_yaml(config) if config else AnalyzeConfig()
    if band is not None:
        cfg = cfg.replace(band=_band(band))
    subject = load_subject(model, n_seqs)
    results = analyze(subject.model, subject.ids, subject.tokenizer, out, cfg, label_ids=subject.label_ids)
    numbers = {"model": model, "tokens": int(subject.ids.numel()), **summary(results), "out": str(out)}
    for key in ("test_loss", "unigram_loss"):
        if key in subject.info:
            numbers[key] = subject.info[key]
    if as_json:
        print(json.dumps(numbers))
        return
    for k, v in numbers.items():
        print(f"{k:40s} {v:.4g}" if isinstance(v, float) else f"{k:40s} {v}")
