"""Boundary crossings along a straight path: where, and how many times, the spline code changes.

The path runs from input `a` to input `b`: x(t) = a + t (b - a), t in [0, 1]. With `at` set, `a`
and `b` are values of that site instead (e.g. a residual stream, or the input embeddings of a
language model) for the one example `inputs`, and the rest of the model runs from there.

Counting. A crossing is one unit's pre-activation changing sign. Sampling t on a grid and counting
code changes between neighbours misses any unit that changes sign twice between two samples, and
lumps together crossings that fall between the same two samples. `find_crossings` therefore
bisects every interval until it is *certified*: at most one unit changes sign between its ends
(the crossing is isolated to one hyperplane) and every other unit cannot have changed sign
twice inside it. For the second part it evaluates the midpoint m of [t0, t1]: a unit is safe if
its pre-activation is affine there (|z(m) - (z(t0) + z(t1))/2| within float noise), or if the
midpoint deviation is less than half its smaller end magnitude. In a ReLU network whose sites
include every nonlinearity before the last one, pre-activations are piecewise linear in t and only
bend where an earlier unit changes sign; with at most one such bend inside an interval, a hidden
double sign change needs a deviation at least half the smaller end magnitude, so the certificate
is exact and so is the count. Elsewhere (max-pooling, smooth activations, uncoded layers) the same
test is a heuristic that bisection makes tighter. Intervals that reach `tol` uncertified count the
code changes between their ends and are reported as `unresolved`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from anatomist.core.errors import AnatomistError
from anatomist.nets.sites import Site, capture, splice
from anatomist.regions.codes import CodeSite, code_sites


def _repeat(inputs: Any, k: int) -> Any:
    """One example (batch 1) repeated k times along the batch dimension."""
    if isinstance(inputs, torch.Tensor):
        if inputs.shape[0] != 1:
            raise AnatomistError(f"inputs for a path at a site must be one example (batch 1), got {list(inputs.shape)}")
        return inputs.expand(k, *inputs.shape[1:])
    if isinstance(inputs, Mapping):
        return {key: _repeat(v, k) if isinstance(v, torch.Tensor) else v for key, v in inputs.items()}
    raise AnatomistError(f"inputs for a path at a site must be a tensor or a mapping, got {type(inputs).__name__}")


class PathProbe:
    """Evaluates the concatenated pre-activations of `sites` at positions t along the path a -> b."""

    def __init__(
        self,
        model: nn.Module,
        sites: Sequence[CodeSite],
        a: torch.Tensor,
        b: torch.Tensor,
        at: Site | str | None = None,
        inputs: Any = None,
        batch_size: int = 128,
    ) -> None:
        if a.shape != b.shape:
            raise AnatomistError(f"path ends differ in shape: a {list(a.shape)}, b {list(b.shape)}")
        if (at is None) != (inputs is None):
            raise AnatomistError("a path at a site needs both `at` (the site) and `inputs` (the one example)")
        self.model, self.sites, self.a, self.b = model, list(sites), a, b
        self.at = Site.parse(at) if at is not None else None
        self.inputs, self.batch_size = inputs, batch_size
        self.n_evals = 0
        self.widths: tuple[int, ...] = ()  # units per site, known after the first evaluation

    @property
    def length(self) -> float:
        return float((self.b - self.a).double().norm())

    def points(self, t: np.ndarray) -> torch.Tensor:
        tt = torch.as_tensor(t, dtype=self.a.dtype, device=self.a.device).reshape(-1, *[1] * self.a.ndim)
        return self.a.unsqueeze(0) + tt * (self.b - self.a).unsqueeze(0)  # [k, *a.shape]

    def __call__(self, t: np.ndarray) -> torch.Tensor:
        """float [len(t), n_units]: pre-activations at each position, in batches."""
        out = [self._batch(t[i : i + self.batch_size]) for i in range(0, len(t), self.batch_size)]
        self.n_evals += len(t)
        return torch.cat(out) if out else torch.zeros(0)

    def _batch(self, t: np.ndarray) -> torch.Tensor:
        pts = self.points(t)
        wanted = [c.site for c in self.sites]
        if self.at is None:
            got = capture(self.model, pts, wanted)
        else:
            with splice(self.model, {self.at: lambda _v: pts}):
                got = capture(self.model, _repeat(self.inputs, len(t)), wanted)
        self.widths = tuple(got[s][0].numel() for s in wanted)
        return torch.cat([got[s].reshape(len(t), -1) for s in wanted], dim=1)

    def slices(self) -> list[slice]:
        """The columns of each site in the concatenated pre-activations."""
        ends = np.cumsum((0, *self.widths))
        return [slice(int(lo), int(hi)) for lo, hi in zip(ends[:-1], ends[1:], strict=True)]


@dataclass
class PathCrossings:
    """Every sign change of a unit along a path: where (t in [0, 1]) and which unit (column of the code)."""

    t: np.ndarray  # float64 [n_crossings], sorted
    unit: np.ndarray  # int64 [n_crossings]
    sites: tuple[str, ...]
    widths: tuple[int, ...]
    length: float  # |b - a|
    n_evals: int  # forward evaluations used
    unresolved: int  # crossings counted in intervals that reached `tol` without a certificate

    def __len__(self) -> int:
        return len(self.t)

    def site_of(self) -> np.ndarray:
        """int64 [n_crossings]: the index of the site each crossing belongs to."""
        return np.searchsorted(np.cumsum(self.widths), self.unit, side="right")

    def per_site(self) -> dict[str, int]:
        counts = np.bincount(self.site_of(), minlength=len(self.sites))
        return {s: int(c) for s, c in zip(self.sites, counts, strict=True)}

    def histogram(self, bins: int) -> np.ndarray:
        """int64 [n_sites, bins]: crossings of each site in each of `bins` equal parts of the path."""
        which = np.minimum((self.t * bins).astype(np.int64), bins - 1)
        out = np.zeros((len(self.sites), bins), dtype=np.int64)
        np.add.at(out, (self.site_of(), which), 1)
        return out


def _signs(z: torch.Tensor) -> torch.Tensor:
    return z > 0


def search_crossings(probe: PathProbe, n_init: int = 64, tol: float = 1e-9, rtol: float | None = None) -> PathCrossings:
    """Bisect the grid intervals of `probe`'s path until each is certified (see the module docstring)."""
    if n_init < 1 or not 0 < tol < 1:
        raise AnatomistError(f"need n_init >= 1 and 0 < tol < 1, got n_init={n_init}, tol={tol}")
    grid = np.linspace(0.0, 1.0, n_init + 1)
    z = probe(grid)  # [n_init + 1, n_units]
    if rtol is None:  # float noise allowance relative to a site's typical magnitude
        rtol = 1000 * torch.finfo(z.dtype).eps
    scale = torch.cat([z[:, s].abs().mean().expand(s.stop - s.start) for s in probe.slices()])  # [n_units]
    noise = rtol * (scale + scale.mean())
    # work list of intervals (t0, t1, z(t0), z(t1)); popping from the end keeps it short (depth first)
    todo = [(grid[i], grid[i + 1], z[i], z[i + 1]) for i in range(n_init)][::-1]
    found_t: list[np.ndarray] = []
    found_u: list[np.ndarray] = []
    unresolved = 0
    while todo:
        chunk, todo = todo[-probe.batch_size :], todo[: -probe.batch_size]
        t0 = np.array([c[0] for c in chunk])
        t1 = np.array([c[1] for c in chunk])
        z0 = torch.stack([c[2] for c in chunk])  # [m, n_units]
        z1 = torch.stack([c[3] for c in chunk])
        tm = (t0 + t1) / 2
        zm = probe(tm)
        flips = _signs(z0) != _signs(z1)
        dev = (zm - (z0 + z1) / 2).abs()
        safe = flips | (dev <= noise) | (2 * dev < torch.minimum(z0.abs(), z1.abs()))
        certified = (flips.sum(1) <= 1) & safe.all(1)
        tiny = torch.from_numpy(t1 - t0 < tol)
        for i in torch.nonzero(certified | tiny).flatten().tolist():
            units = torch.nonzero(flips[i]).flatten()
            if len(units) == 0:
                continue
            if not certified[i]:
                unresolved += len(units)
            # locate by linear interpolation in the half that holds the sign change
            left = _signs(z0[i, units]) != _signs(zm[i, units])
            a_t = np.where(left.numpy(), t0[i], tm[i])
            b_t = np.where(left.numpy(), tm[i], t1[i])
            za = torch.where(left, z0[i, units], zm[i, units]).double().numpy()
            zb = torch.where(left, zm[i, units], z1[i, units]).double().numpy()
            frac = np.clip(za / np.where(za == zb, 1.0, za - zb), 0.0, 1.0)
            found_t.append(a_t + frac * (b_t - a_t))
            found_u.append(units.numpy())
        for i in torch.nonzero(~(certified | tiny)).flatten().tolist()[::-1]:
            # children keep their parent's own end rows and one copy of the midpoint row, never views
            # into this round's stacked tensors (which would keep every round's stack alive)
            mid = zm[i].clone()
            todo.append((tm[i], t1[i], mid, chunk[i][3]))
            todo.append((t0[i], tm[i], chunk[i][2], mid))
    t = np.concatenate(found_t) if found_t else np.zeros(0)
    u = np.concatenate(found_u).astype(np.int64) if found_u else np.zeros(0, dtype=np.int64)
    order = np.argsort(t, kind="stable")
    names = tuple(c.module for c in probe.sites)
    return PathCrossings(t[order], u[order], names, probe.widths, probe.length, probe.n_evals, unresolved)


def find_crossings(
    model: nn.Module,
    sites: Sequence[str | Site],
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    at: Site | str | None = None,
    inputs: Any = None,
    n_init: int = 64,
    tol: float = 1e-9,
    batch_size: int = 128,
) -> PathCrossings:
    """Every code change on the segment a -> b (one example each, no batch dimension), with positions."""
    probe = PathProbe(model, code_sites(model, sites), a, b, at, inputs, batch_size)
    return search_crossings(probe, n_init, tol)


def count_crossings(
    model: nn.Module,
    sites: Sequence[str | Site],
    a: torch.Tensor,
    b: torch.Tensor,
    **kwargs: Any,
) -> int:
    """The number of unit sign changes along the segment a -> b (exact for ReLU networks; see the module)."""
    return len(find_crossings(model, sites, a, b, **kwargs))


@dataclass
class PathDensity:
    """Code changes along a path in `bins` equal parts, per site: counts, and per unit length."""

    counts: np.ndarray  # int64 [n_sites, bins]
    sites: tuple[str, ...]
    length: float
    n_evals: int

    @property
    def density(self) -> np.ndarray:
        """float64 [bins]: code changes per unit of input-space length, all sites together."""
        bins = self.counts.shape[1]
        return self.counts.sum(0) / (self.length / bins) if self.length > 0 else np.zeros(bins)


def boundary_density(
    model: nn.Module,
    sites: Sequence[str | Site],
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    bins: int = 100,
    refine: bool = True,
    at: Site | str | None = None,
    inputs: Any = None,
    tol: float = 1e-9,
    batch_size: int = 128,
) -> PathDensity:
    """Boundary density along a -> b: exact crossings binned (`refine`), or Hamming changes between grid samples."""
    probe = PathProbe(model, code_sites(model, sites), a, b, at, inputs, batch_size)
    names = tuple(c.module for c in probe.sites)
    if refine:
        crossings = search_crossings(probe, bins, tol)
        return PathDensity(crossings.histogram(bins), names, probe.length, probe.n_evals)
    signs = _signs(probe(np.linspace(0.0, 1.0, bins + 1)))  # [bins + 1, n_units]
    changes = (signs[1:] != signs[:-1]).numpy()  # [bins, n_units]
    counts = np.stack([changes[:, s].sum(1) for s in probe.slices()])
    return PathDensity(counts.astype(np.int64), names, probe.length, probe.n_evals)
