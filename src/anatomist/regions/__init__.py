"""The polytope lens: the regions that piecewise-linear activations cut input space into.

- `spline_codes(model, inputs, sites)`: each input's code at activation modules (binary for ReLU,
  soft gates for SiLU/GELU), bit-packed; `stream_codes` over a long dataset keeps only packed codes.
- `count_crossings(model, sites, a, b)` / `find_crossings`: every code change on the segment a -> b,
  exact for ReLU networks (adaptive bisection with a certificate); `boundary_density` bins them.
- `cluster(features, k, metric)`, `score_clusters`: k-medoids clusters of inputs by code distance
  (Hamming, L1), raw activations (Euclidean) or direction (cosine), scored against labels (purity, NMI).

The experiments on the MNIST CNN and SmolLM2 are the run kinds `regions-density` and `regions-cluster`
(`anatomist.runs.regions`).
"""

from anatomist.regions.cluster import Clusters, cluster, score_clusters
from anatomist.regions.codes import CodeSite, SplineCodes, code_sites, spline_codes, stream_codes
from anatomist.regions.paths import PathCrossings, PathDensity, boundary_density, count_crossings, find_crossings

__all__ = [
    "Clusters",
    "CodeSite",
    "PathCrossings",
    "PathDensity",
    "SplineCodes",
    "boundary_density",
    "cluster",
    "code_sites",
    "count_crossings",
    "find_crossings",
    "score_clusters",
    "spline_codes",
    "stream_codes",
]
