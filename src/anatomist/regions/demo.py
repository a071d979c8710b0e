"""The polytope lens's step of `anatomist demo`: a small version of both MNIST CNN experiments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def regions_step(run_dir: Path) -> dict[str, Any]:
    """Boundary density on 6 paths between MNIST digits (one also counted exactly) and clusters of 400 digits."""
    from anatomist.regions.experiments import ClusterConfig, DensityConfig, cluster_experiment, density_experiment

    out = Path(run_dir) / "regions"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small forwards: one thread is faster on a busy 2-core machine
    try:
        density = DensityConfig(pairs=6, same_class_pairs=4, bins=60, exact_pairs=1)
        dens = density_experiment(density, out / "density")
        clus = cluster_experiment(ClusterConfig(n=400, k=10, fit_on=400), out / "cluster")
    finally:
        torch.set_num_threads(threads)
    fc = dens["sites"][-1]
    nmi = {(r["site"], r["representation"]): r["nmi"] for r in clus["rows"]}
    return {
        "density_ratio_at_class_change": dens["per_site"][fc]["ratio_at_change"],
        "density_ratio_same_class_matched": dens["per_site"][fc]["ratio_same_class_matched"],
        "crossings_exact": dens["crossings_exact"],
        "crossings_sampled": dens["crossings_sampled"],
        "nmi_code": nmi[(fc, "code")],
        "nmi_activation": nmi[(fc, "activation")],
        "nmi_direction": nmi[(fc, "direction")],
    }
