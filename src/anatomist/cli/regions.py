"""`anatomist regions density|cluster`: short aliases of `anatomist run regions-density|regions-cluster`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from anatomist.cli.run import invoke
from anatomist.core.errors import AnatomistError

regions_app = typer.Typer(
    help="Polytope lens: spline codes, boundary density along paths, region clustering.", no_args_is_help=True
)

ModelArg = Annotated[
    str | None,
    typer.Argument(help="'mnist-cnn' (default), 'smollm2', or a local image-classifier/causal-LM folder"),
]
SitesOpt = Annotated[
    str | None,
    typer.Option(help="comma-separated activation modules (default: all of an image model, 3 MLPs of an LM)"),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(help="run config YAML, e.g. experiments/regions_*.yaml (flags override it)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object")]


def split_sites(sites: str | None) -> list[str] | None:
    """`--sites a,b` as a list; None when the flag is not given."""
    if sites is None:
        return None
    names = [s.strip() for s in sites.split(",") if s.strip()]
    if not names:
        raise AnatomistError(f"--sites: expected comma-separated module names, got '{sites}'")
    return names


@regions_app.command()
def density(
    model: ModelArg = None,
    sites: SitesOpt = None,
    out: Annotated[Path, typer.Option(help="run folder (metrics.json, paths.json, plots)")] = Path(
        "runs/regions-density"
    ),
    pairs: Annotated[int | None, typer.Option(help="paths between inputs of different predicted classes")] = None,
    bins: Annotated[int | None, typer.Option(help="samples per path")] = None,
    exact_pairs: Annotated[int | None, typer.Option(help="pairs also counted exactly by bisection (0 for LMs)")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Does boundary density peak where the prediction changes along a path between two inputs?"""
    extra = {"model": model, "sites": split_sites(sites), "pairs": pairs, "bins": bins, "exact_pairs": exact_pairs}
    invoke(str(config) if config else "regions-density", [], out, as_json=as_json, extra=extra)


@regions_app.command()
def cluster(
    model: ModelArg = None,
    sites: SitesOpt = None,
    out: Annotated[Path, typer.Option(help="run folder (metrics.json, clusters.png)")] = Path("runs/regions-cluster"),
    n: Annotated[int | None, typer.Option(help="images, or tokens for a language model")] = None,
    k: Annotated[int | None, typer.Option(help="clusters, the same for every representation")] = None,
    runs: Annotated[int | None, typer.Option(help="k-medoids runs with different seeds (scores averaged)")] = None,
    tokens: Annotated[
        str | None, typer.Option(help="vision transformers: 'image' (one code per image) or 'token' (one per token)")
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Purity and NMI of clusters by spline code vs activation vs direction, against labels."""
    extra = {"model": model, "sites": split_sites(sites), "n": n, "k": k, "runs": runs, "tokens": tokens}
    invoke(str(config) if config else "regions-cluster", [], out, as_json=as_json, extra=extra)
