"""`anatomist regions ...`: the polytope lens on a real model (boundary density, region clustering)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

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
    typer.Option(help="YAML of the command's config fields, e.g. experiments/regions_*.yaml (flags override it)"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object")]


def _overrides(sites: str | None, **flags: Any) -> dict[str, Any]:
    out = {k: v for k, v in flags.items() if v is not None}
    if sites is not None:
        names = tuple(s.strip() for s in sites.split(",") if s.strip())
        if not names:
            raise AnatomistError(f"--sites: expected comma-separated module names, got '{sites}'")
        out["sites"] = names
    return out


@regions_app.command()
def density(
    model: ModelArg = None,
    sites: SitesOpt = None,
    out: Annotated[Path, typer.Option(help="output folder (results.json, paths.json, plots)")] = Path(
        "runs/regions-density"
    ),
    pairs: Annotated[int | None, typer.Option(help="paths between inputs of different predicted classes")] = None,
    bins: Annotated[int | None, typer.Option(help="samples per path")] = None,
    exact_pairs: Annotated[int | None, typer.Option(help="pairs also counted exactly by bisection (0 for LMs)")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Does boundary density peak where the prediction changes along a path between two inputs?"""
    from anatomist.regions.experiments import DensityConfig, density_experiment

    base = DensityConfig.from_yaml(config) if config else DensityConfig()
    cfg = base.replace(**_overrides(sites, model=model, pairs=pairs, bins=bins, exact_pairs=exact_pairs))
    result = density_experiment(cfg, out)
    result["out"] = str(out)
    if as_json:
        print(json.dumps(result))
        return
    print(
        f"{result['pairs_with_class_change']} paths with a class change (at t = {result['change_position_mean']:.2f}"
        f" +- {result['change_position_sd']:.2f}), {result['same_class_pairs']} same-class paths"
    )
    print("density near the class change / elsewhere (median over paths), and controls:")
    print(f"{'site':32s} {'at change':>10s} {'at middle':>10s} {'same-class':>10s} {'matched':>8s} {'share>1':>8s}")
    for site, s in result["per_site"].items():
        print(
            f"{site:32s} {s['ratio_at_change']:10.3f} {s['ratio_at_middle']:10.3f} "
            f"{s['ratio_same_class_middle']:10.3f} {s['ratio_same_class_matched']:8.3f} {s['share_above_1']:8.2f}"
        )
    if result["exact_pairs"]:
        print(
            f"exact vs sampled crossings on {result['exact_pairs']} paths: {result['crossings_exact']} vs "
            f"{result['crossings_sampled']}"
        )
    print(f"-> {out}")


@regions_app.command()
def cluster(
    model: ModelArg = None,
    sites: SitesOpt = None,
    out: Annotated[Path, typer.Option(help="output folder (results.json, clusters.png)")] = Path(
        "runs/regions-cluster"
    ),
    n: Annotated[int | None, typer.Option(help="images, or tokens for a language model")] = None,
    k: Annotated[int | None, typer.Option(help="clusters, the same for every representation")] = None,
    runs: Annotated[int | None, typer.Option(help="k-medoids runs with different seeds (scores averaged)")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Purity and NMI of clusters by spline code vs activation vs direction, against labels."""
    from anatomist.regions.experiments import ClusterConfig, cluster_experiment

    base = ClusterConfig.from_yaml(config) if config else ClusterConfig()
    result = cluster_experiment(base.replace(**_overrides(sites, model=model, n=n, k=k, runs=runs)), out)
    result["out"] = str(out)
    if as_json:
        print(json.dumps(result))
        return
    print(f"{result['n']} rows, codes in {result['code_bytes'] / 1e6:.2f} MB")
    print(f"{'site':28s} {'representation':12s} {'label':12s} {'purity':>7s} {'chance':>7s} {'NMI':>6s} {'(sd)':>6s}")
    for r in result["rows"]:
        print(
            f"{r['site']:28s} {r['representation']:12s} {r['label']:12s} {r['purity']:7.3f} "
            f"{r['chance_purity']:7.3f} {r['nmi']:6.3f} {r['nmi_sd']:6.3f}"
        )
    print(f"-> {out}")
