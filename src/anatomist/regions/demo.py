"""The polytope lens's step of `anatomist demo`: a small version of both MNIST CNN experiments."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def regions_step(run_dir: Path) -> dict[str, Any]:
    """Boundary density on 8 paths between MNIST digits (one also counted exactly) and clusters of 600 digits."""
    from anatomist.regions.experiments import ClusterConfig, DensityConfig, cluster_experiment, density_experiment

    out = Path(run_dir) / "regions"
    dens = density_experiment(DensityConfig(pairs=8, same_class_pairs=4, bins=100, exact_pairs=1), out / "density")
    clus = cluster_experiment(ClusterConfig(n=600, k=10, fit_on=600), out / "cluster")
    fc = dens["sites"][-1]
    nmi = {(r["site"], r["representation"]): r["nmi"] for r in clus["rows"]}
    return {
        "density_ratio_at_class_change": dens["per_site"][fc]["ratio_at_change"],
        "density_ratio_same_class_middle": dens["per_site"][fc]["ratio_same_class_middle"],
        "crossings_exact": dens["crossings_exact"],
        "crossings_sampled": dens["crossings_sampled"],
        "nmi_code": nmi[(fc, "code")],
        "nmi_activation": nmi[(fc, "activation")],
        "nmi_direction": nmi[(fc, "direction")],
    }
