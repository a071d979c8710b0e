"""Description length of a sparse code, in bits (Ayonrinde et al., MDL-SAEs).

An SAE explains an input by naming its active latents and their values. Two prices:

- the bound:    L0 · (B + log₂F) bits per input (B bits for each value, log₂F to name each latent);
- the entropy-coded estimate: per latent i, DL_i = H(p_i) + p_i · H(q_i), where p_i is its firing rate,
  H(p) the binary entropy of firing, and q_i the histogram of its nonzero values quantised to a grid of
  step `max|a| / 2^B`; bits per input = Σ_i DL_i.

B (the precision) is the coarsest that keeps the reconstruction from the quantised code within the user's
FVU tolerance. The dictionary itself costs F · d_out · `dict_bits_per_weight` bits, spread over
`amortise_over` inputs (default: the inputs scored). `select_mdl` picks, among dictionaries whose quantised
code meets the tolerance, the one with the fewest bits per input, by one of two rules (`MDL_RULES`):

- "code" (the paper's, the default): code bits per input, the dictionary amortised over a dataset large enough
  that its own bits per input vanish;
- "code+dictionary": code bits plus the dictionary's bits spread over `amortise_over` inputs (the inputs scored),
  which favours small dictionaries when few inputs are scored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from anatomist.core import AnatomistError, Config
from anatomist.evaluate.dictionary import Dictionary

MDLRule = Literal["code", "code+dictionary"]
# rule -> (the result key it ranks by, its label in outputs)
MDL_RULES: dict[str, tuple[str, str]] = {
    "code": ("code_bits_per_input", "code bits per input, dictionary amortised (the paper's)"),
    "code+dictionary": ("bits_per_input", "code + dictionary bits per input, dictionary spread over the inputs scored"),
}


class MDLConfig(Config):
    """How a code is priced."""

    fvu_tolerance: float = Field(0.1, gt=0, description="the quantised code must reconstruct with FVU at most this")
    max_bits: int = Field(16, ge=1, le=30, description="finest precision tried, in bits per value")
    dict_bits_per_weight: float = Field(16.0, ge=0, description="bits to store one decoder weight")
    amortise_over: float | None = Field(
        None, gt=0, description="inputs the dictionary's cost is spread over; null = the inputs scored"
    )
    batch_size: int = Field(4096, gt=0, description="rows encoded at once")


def binary_entropy(p: Tensor) -> Tensor:
    """H(p) in bits, elementwise; 0 at p = 0 and p = 1."""
    p = p.double()
    q = 1 - p
    return -(torch.xlogy(p, p) + torch.xlogy(q, q)) / math.log(2)


def quantise(acts: Tensor, step: float) -> Tensor:
    """Nonzero activations rounded to multiples of `step` (at least one step in magnitude: a firing latent
    stays firing); zeros stay zero."""
    q = (acts / step).round().abs().clamp_min(1) * acts.sign()
    return q * step


def latent_bits(acts: Tensor, step: float) -> tuple[Tensor, Tensor]:
    """Per-latent (firing bits H(p_i), value bits p_i·H(q_i)) [F] of a code acts [n, F] on a grid of `step`."""
    n, f = acts.shape
    fired = acts != 0  # [n, F]
    counts = fired.sum(0).double()  # [F]
    firing = binary_entropy(counts / n)
    rows, cols = fired.nonzero(as_tuple=True)
    q = quantise(acts[rows, cols], step).div(step).round().long()  # integer symbols of the fired entries
    q = q - q.min() if len(q) else q
    span = int(q.max()) + 1 if len(q) else 1
    bins, c = (cols.long() * span + q).unique(return_counts=True)  # one bin per (latent, symbol) seen
    owner = bins // span  # the latent of each bin
    # H(q_i) = log2 n_i - (1/n_i) Σ_s c_s log2 c_s over the latent's bins
    sum_clogc = torch.zeros(f, dtype=torch.float64).index_add_(0, owner, torch.xlogy(c.double(), c.double()))
    h_values = torch.where(counts > 0, counts.clamp_min(1).log() - sum_clogc / counts.clamp_min(1), 0.0)
    values = (counts / n) * h_values / math.log(2)
    return firing, values


def _encode_all(sae: Dictionary, x: Tensor, batch_size: int) -> Tensor:
    with torch.no_grad():
        return torch.cat([sae.encode(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def _fvu(sae: Dictionary, x: Tensor, acts: Tensor, batch_size: int) -> float:
    """Fraction of variance unexplained of x [n, d] by decode(acts), summed over dims."""
    err = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            err += float((sae.decode(acts[i : i + batch_size]) - x[i : i + batch_size]).double().pow(2).sum())
    var = float((x.double() - x.double().mean(0)).pow(2).sum())
    return err / max(var, 1e-30)


def description_length(sae: Dictionary, x: Tensor, cfg: MDLConfig | None = None) -> dict[str, Any]:
    """Bits per input of `sae`'s code of x [n, d_in], and its parts (see the module docstring).

    Returns bits_per_input (code + amortised dictionary), code_bits_per_input = firing_bits + value_bits,
    dictionary_bits, bound_bits_per_input (L0·(B + log₂F)), precision_bits B, step, fvu (exact code),
    fvu_quantised, meets_tolerance, l0, d_sae, n_inputs.
    """
    cfg = cfg or MDLConfig.parse({})
    if x.ndim != 2:
        raise AnatomistError(f"description_length: inputs have shape {list(x.shape)}; need [n, d_in]")
    x = x.to(torch.float32)
    acts = _encode_all(sae, x, cfg.batch_size)  # [n, F]
    n, f = acts.shape
    top = float(acts.abs().max())
    fvu = _fvu(sae, x, acts, cfg.batch_size)
    # bisect the coarsest precision whose quantised code meets the tolerance (finer grids reconstruct better)
    lo, hi = 1, cfg.max_bits
    fvus: dict[int, float] = {}

    def fvu_at(b: int) -> float:
        if b not in fvus:
            fvus[b] = _fvu(sae, x, quantise(acts, top / 2**b), cfg.batch_size) if top > 0 else fvu
        return fvus[b]

    meets = fvu_at(hi) <= cfg.fvu_tolerance
    if meets:
        while lo < hi:
            mid = (lo + hi) // 2
            if fvu_at(mid) <= cfg.fvu_tolerance:
                hi = mid
            else:
                lo = mid + 1
    bits = hi
    step = top / 2**bits if top > 0 else 1.0
    firing, values = latent_bits(acts, step)
    l0 = float((acts != 0).sum()) / n
    d_out = int(sae.decode(acts[:1]).shape[-1])
    dict_bits = f * d_out * cfg.dict_bits_per_weight
    code = float(firing.sum() + values.sum())
    return {
        "bits_per_input": code + dict_bits / (cfg.amortise_over or n),
        "code_bits_per_input": code,
        "firing_bits_per_input": float(firing.sum()),
        "value_bits_per_input": float(values.sum()),
        "dictionary_bits": dict_bits,
        "dictionary_bits_per_input": dict_bits / (cfg.amortise_over or n),
        "bound_bits_per_input": l0 * (bits + math.log2(f)),
        "precision_bits": bits,
        "step": step,
        "fvu": fvu,
        "fvu_quantised": fvu_at(bits),
        "meets_tolerance": meets,
        "fvu_tolerance": cfg.fvu_tolerance,
        "l0": l0,
        "d_sae": f,
        "n_inputs": n,
    }


def select_mdl(results: Sequence[dict[str, Any]], rule: MDLRule = "code") -> int:
    """Index of the result with the fewest bits by `rule` (see `MDL_RULES`) among those meeting the tolerance."""
    key = MDL_RULES[rule][0]
    ok = [i for i, r in enumerate(results) if r["meets_tolerance"]]
    if not ok:
        best = min(r["fvu"] for r in results)
        raise AnatomistError(f"no dictionary meets the FVU tolerance (best exact FVU {best:.4g}); raise the tolerance")
    return min(ok, key=lambda i: results[i][key])
