"""The polytope lens: the regions that piecewise-linear activations cut input space into.

- `spline_codes(model, inputs, sites)`: each input's code at activation modules (binary for ReLU,
  soft gates for SiLU/GELU), bit-packed; `stream_codes` over a long dataset keeps only packed codes.
- `count_crossings(model, sites, a, b)` / `find_crossings`: every code change on the segment a -> b,
  exact for ReLU networks (adaptive bisection with a certificate); `boundary_density` bins them.
- `cluster_codes` and friends: cluster inputs by code distance (Hamming, L1), raw activations
  (Euclidean) or direction (cosine) and score the clusters against labels (purity, NMI).
"""

from anatomist.regions.codes import CodeSite, SplineCodes, code_sites, spline_codes, stream_codes
from anatomist.regions.paths import PathCrossings, PathDensity, boundary_density, count_crossings, find_crossings

__all__ = [
    "CodeSite",
    "PathCrossings",
    "PathDensity",
    "SplineCodes",
    "boundary_density",
    "code_sites",
    "count_crossings",
    "find_crossings",
    "spline_codes",
    "stream_codes",
]
