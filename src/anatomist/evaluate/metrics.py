"""The shared vocabulary of faithfulness and sparsity numbers, as small functions on tensors.

Every lens reports these names where they apply:

- `mse`: mean over rows of ‖a − â‖² / d (mean squared error per element).
- `fvu`: fraction of variance unexplained, Σ‖a − â‖² / Σ‖a − mean(a)‖² (mean over rows, per feature);
  0 for a perfect reconstruction, 1 for predicting the mean. `explained_variance` = 1 − fvu.
- `cosine`: mean over rows of cos(a, â).
- `l0`: mean number of non-zero latents per row.
- `dead_fraction`: latents that never fired; `dense_fraction`: latents firing on more than a
  threshold share of rows (10% by default); `density_histogram`: counts of log10 firing rates.
- `next_token_ce`: language-model cross-entropy (nats per predicted token); `kl_div`: KL(clean ‖ other)
  per position, the direction e2e training minimises; `loss_recovered`:
  (CE_zero − CE_spliced) / (CE_zero − CE_clean), 1 when splicing changes nothing, 0 when it is as bad
  as zero-ablating the site.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DENSE_THRESHOLD = 0.1


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float((x.double() - x_hat.double()).pow(2).mean())


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over rows x [n, d]."""
    x64 = x.double()
    residual = float((x64 - x_hat.double()).pow(2).sum())
    return _variance_ratio(residual, float((x64 - x64.mean(0)).pow(2).sum()))


def _variance_ratio(residual: float, total: float) -> float:
    """residual / total; NaN when the activations do not vary (e.g. all zero): no variance to explain."""
    return residual / total if total > 0 else math.nan


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return 1.0 - fvu(x, x_hat)


def cosine(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float(F.cosine_similarity(x.double(), x_hat.double(), dim=-1).mean())


def l0(acts: torch.Tensor) -> float:
    """Mean number of non-zero latents per row of acts [n, d_sae]."""
    return float((acts != 0).sum(-1).double().mean())


def dead_fraction(rates: torch.Tensor) -> float:
    """Share of latents that never fired (rate exactly 0) over the evaluated rows."""
    return float((rates == 0).double().mean())


def dense_fraction(rates: torch.Tensor, threshold: float = DENSE_THRESHOLD) -> float:
    """Share of latents that fire on more than `threshold` of the rows."""
    return float((rates > threshold).double().mean())


def density_histogram(rates: torch.Tensor, bins: int = 20, low: float = -8.0) -> dict[str, list[float]]:
    """Histogram of log10 firing rates of the latents that fired, over [low, 0]; dead latents counted apart."""
    alive = rates[rates > 0].double().log10().clamp(min=low)
    counts = torch.histc(alive, bins=bins, min=low, max=0.0) if alive.numel() else torch.zeros(bins)
    edges = torch.linspace(low, 0.0, bins + 1)
    return {"log10_rate_edges": edges.tolist(), "counts": counts.tolist(), "dead": [float((rates == 0).sum())]}


def next_token_ce(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy per predicted token: logits [b, pos, vocab] at position t predict ids[:, t+1].

    Returns [b, pos-1] losses; `mask` [b, pos-1] (bool) marks which predictions count (the caller sums).
    """
    logp = logits[:, :-1].float().log_softmax(-1)
    ce = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return ce if mask is None else ce * mask


def kl_div(clean_logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """KL(clean ‖ other) per position over the last (vocabulary) dimension, in nats."""
    logp = clean_logits.float().log_softmax(-1)
    logq = other_logits.float().log_softmax(-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def loss_recovered(ce_clean: float, ce_spliced: float, ce_zero: float) -> float:
    """(CE_zero − CE_spliced) / (CE_zero − CE_clean); NaN when zero-ablation changes nothing."""
    gap = ce_zero - ce_clean
    return (ce_zero - ce_spliced) / gap if gap != 0 else math.nan


class ReconstructionStats:
    """Running sums over batches of rows, so reconstruction/sparsity metrics cover any number of tokens."""

    def __init__(self) -> None:
        self.n = 0
        self.sq_err = 0.0
        self.sum_x: torch.Tensor | None = None  # [d] float64
        self.sum_sq = 0.0
        self.cos = 0.0
        self.nonzero = 0.0
        self.fires: torch.Tensor | None = None  # [d_sae] how many rows each latent fired on

    def update(self, x: torch.Tensor, x_hat: torch.Tensor, acts: torch.Tensor) -> None:
        x64, xh64 = x.detach().double(), x_hat.detach().double()
        self.n += x.shape[0]
        self.sq_err += float((x64 - xh64).pow(2).sum())
        self.sum_x = x64.sum(0) if self.sum_x is None else self.sum_x + x64.sum(0)
        self.sum_sq += float(x64.pow(2).sum())
        self.cos += float(F.cosine_similarity(x64, xh64, dim=-1).sum())
        fired = acts.detach() != 0  # [n, d_sae]
        self.nonzero += float(fired.sum())
        counts = fired.sum(0).to("cpu", torch.long)
        self.fires = counts if self.fires is None else self.fires + counts

    def rates(self) -> torch.Tensor:
        assert self.fires is not None
        return self.fires.double() / max(self.n, 1)

    def result(self, dense_threshold: float = DENSE_THRESHOLD) -> dict[str, float]:
        assert self.sum_x is not None and self.n > 0
        d = self.sum_x.numel()
        total_var = self.sum_sq - float(self.sum_x.pow(2).sum()) / self.n  # Σ‖x − mean‖²
        rates = self.rates()
        fvu_ = _variance_ratio(self.sq_err, total_var)
        return {
            "n_rows": float(self.n),
            "mse": self.sq_err / (self.n * d),
            "fvu": fvu_,
            "explained_variance": 1.0 - fvu_,
            "cosine": self.cos / self.n,
            "l0": self.nonzero / self.n,
            "dead_fraction": dead_fraction(rates),
            "dense_fraction": dense_fraction(rates, dense_threshold),
        }
