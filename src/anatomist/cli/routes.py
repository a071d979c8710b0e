"""`anatomist routes layers|analyze`: a model's MoE layers, and a short alias of `anatomist run routes`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from anatomist.cli.run import invoke
from anatomist.core.errors import AnatomistError
from anatomist.core.io import dumps
from anatomist.routes.control import find_moe_layers, router_basis
from anatomist.runs.routes import load_moe_model

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
        print(dumps({"model": model, "layers": rows}))
        return
    for r in rows:
        experts = f"{r['n_experts']} experts, top-{r['top_k']}, rank {r['router_rank']}"
        print(f"{r['block']:28s} router {r['router']}  {experts}")


@routes_app.command()
def analyze(
    model: Annotated[str | None, typer.Argument(help="'moe-lm' (default) or a local Hugging Face MoE folder")] = None,
    out: Annotated[Path, typer.Option(help="run folder (metrics.json and plots)")] = Path("runs/routes"),
    n_seqs: Annotated[int | None, typer.Option(help="held-out wiki sequences to analyse (default 256)")] = None,
    band: Annotated[
        str | None, typer.Option(help="MoE layer indices of the band, e.g. '0,1,2,3' (default: all)")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="run config YAML (kind: routes; flags override it)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Paths, cross-layer stability, probes and monosemanticity of paths vs experts on held-out wiki text."""
    extra = {"model": model, "n_seqs": n_seqs, "band": _band(band)}
    invoke(str(config) if config else "routes", [], out, as_json=as_json, extra=extra)
