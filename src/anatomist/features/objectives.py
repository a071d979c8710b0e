"""Training objectives as loss terms, the e2e_sae way: each term a small frozen config with a coefficient and a
`calc_loss`, and each objective a choice of terms (Braun et al.).

- local:  recon                  mean_b ‖a − â‖², on shuffled activation rows
- e2e:    kl                     KL(clean ‖ spliced) of the model's outputs at every position, the SAE spliced
                                 into the frozen model
- e2e+ds: kl + downstream_mse    β/(L−l) · Σ_k MSE(â^(k), a^(k)) over the L−l downstream sites k of the spliced
                                 forward (the paper's and e2e_sae's form; β is the term's coeff, MSE the mean over
                                 positions and dims); or kl + downstream_fvu, mean_k FVU(â^(k), a^(k)), which
                                 weighs each site by its own variance (so its β is not the paper's)

The dictionary's own sparsity (and AuxK) terms are added by every objective (`total_loss`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from pydantic import Field

from anatomist.core.config import Config
from anatomist.evaluate.metrics import kl_div
from anatomist.features.base import TrainOutput
from anatomist.nets.sites import Site

ObjectiveName = Literal["local", "e2e", "e2e+ds"]
DownstreamForm = Literal["mse", "fvu"]


def kl_loss(clean_logits: torch.Tensor, spliced_logits: torch.Tensor, counted: torch.Tensor) -> torch.Tensor:
    """Mean KL(clean ‖ spliced) over the counted predictions [b, pos]."""
    kl = kl_div(clean_logits, spliced_logits)  # [b, pos]
    return (kl * counted).sum() / counted.sum().clamp_min(1)


def _kept_rows(a: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """The rows [n, d] of a site's values [b, seq, d] at the kept positions (all positions when keep is None)."""
    if keep is not None and a.ndim == 3:
        return a[keep]
    return a.reshape(-1, a.shape[-1])


def downstream_loss(
    spliced: dict[Site, torch.Tensor], clean: dict[Site, torch.Tensor], keep: torch.Tensor | None,
    form: DownstreamForm = "mse",
) -> torch.Tensor:
    """1/(L−l) · Σ_k over downstream sites of the spliced values' error against the clean ones, kept positions only.

    form "mse" (Braun et al.): the site's mean squared error over positions and dims, in the model's units.
    form "fvu": the site's Σ‖â − a‖² / Σ‖a − mean(a)‖², so a high-variance site counts no more than a quiet one.
    """
    terms = []
    for s, a in clean.items():
        a_rows, a_hat = _kept_rows(a, keep), _kept_rows(spliced[s], keep)
        err = (a_hat - a_rows).pow(2)
        if form == "mse":
            terms.append(err.mean())
        else:
            terms.append(err.sum() / (a_rows - a_rows.mean(0)).pow(2).sum().clamp_min(1e-12))
    return torch.stack(terms).mean()


@dataclass
class StepValues:
    """What one training step computed; each loss term reads the values it needs."""

    out: TrainOutput  # the dictionary's training forward
    target: torch.Tensor | None = None  # local: [batch, d_out] target rows (scaled)
    clean_logits: torch.Tensor | None = None  # e2e: [b, pos, vocab] of the clean model
    logits: torch.Tensor | None = None  # e2e: [b, pos, vocab] with the SAE spliced in
    counted: torch.Tensor | None = None  # e2e: [b, pos] bool, predictions that count
    clean_downstream: dict[Site, torch.Tensor] = field(default_factory=dict)  # e2e+ds: [b, seq, d] per site
    spliced_downstream: dict[Site, torch.Tensor] = field(default_factory=dict)
    keep: torch.Tensor | None = None  # e2e: [b, seq] positions the SAE reads (BOS left out)
    logged: dict[str, float] = field(default_factory=dict)  # extra numbers for the loss log


class LossTerm(Config):
    """One term of a training objective: coeff · calc_loss(values)."""

    name: ClassVar[str]
    spliced: ClassVar[bool] = False  # reads the model's forward with the SAE spliced in (an e2e term)
    coeff: float = Field(1.0, ge=0, description="weight of the term in the loss")

    def calc_loss(self, v: StepValues) -> torch.Tensor:
        """Hook each term defines: its unweighted value on one step's values."""
        raise NotImplementedError(f"{type(self).__name__} defines no loss")


class ReconstructionLoss(LossTerm):
    """Squared error summed over dims, mean over the batch (the contract of `TrainOutput`)."""

    name: ClassVar[str] = "recon"

    def calc_loss(self, v: StepValues) -> torch.Tensor:
        assert v.target is not None
        return (v.target - v.out.recon).pow(2).sum(-1).mean()


class LogitsKLLoss(LossTerm):
    """KL(clean ‖ spliced) of the model's next-token distributions."""

    name: ClassVar[str] = "kl"
    spliced: ClassVar[bool] = True

    def calc_loss(self, v: StepValues) -> torch.Tensor:
        assert v.clean_logits is not None and v.logits is not None and v.counted is not None
        return kl_loss(v.clean_logits, v.logits, v.counted)


class DownstreamLoss(LossTerm):
    """The downstream sites' values in the spliced forward against the clean ones, averaged over the sites."""

    spliced: ClassVar[bool] = True
    form: ClassVar[DownstreamForm]

    def calc_loss(self, v: StepValues) -> torch.Tensor:
        return downstream_loss(v.spliced_downstream, v.clean_downstream, v.keep, self.form)


class DownstreamMSELoss(DownstreamLoss):
    """β/(L−l) · Σ_k MSE(â^(k), a^(k)): the paper's downstream term, coeff = β."""

    name: ClassVar[str] = "downstream_mse"
    form: ClassVar[DownstreamForm] = "mse"


class DownstreamFVULoss(DownstreamLoss):
    """mean_k FVU(â^(k), a^(k)): each downstream site weighed by its own variance."""

    name: ClassVar[str] = "downstream_fvu"
    form: ClassVar[DownstreamForm] = "fvu"


DOWNSTREAM_TERMS: dict[str, type[DownstreamLoss]] = {"mse": DownstreamMSELoss, "fvu": DownstreamFVULoss}


def objective_terms(
    objective: ObjectiveName, kl_coeff: float = 1.0, ds_coeff: float = 1.0, ds_form: DownstreamForm = "mse"
) -> tuple[LossTerm, ...]:
    """The loss terms an `objective:` key names, with their coefficients."""
    if objective == "local":
        return (ReconstructionLoss(coeff=1.0),)
    kl = LogitsKLLoss(coeff=kl_coeff)
    return (kl,) if objective == "e2e" else (kl, DOWNSTREAM_TERMS[ds_form](coeff=ds_coeff))


def total_loss(terms: Sequence[LossTerm], v: StepValues) -> tuple[torch.Tensor, dict[str, float]]:
    """Σ coeff·term + the dictionary's sparsity and AuxK terms; and each term's value for the log."""
    raw = [t.calc_loss(v) for t in terms]
    weighted = [t.coeff * r for t, r in zip(terms, raw, strict=True)]
    loss = weighted[0] + v.out.sparsity_loss + v.out.aux_loss  # this order keeps the sums of earlier versions
    for w in weighted[1:]:
        loss = loss + w
    logged = {t.name: r.item() for t, r in zip(terms, raw, strict=True)}
    return loss, {**logged, "sparsity": v.out.sparsity_loss.item(), "aux": v.out.aux_loss.item(), **v.logged}
