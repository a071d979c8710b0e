"""One model, one dataset, several decompositions, one table in a shared vocabulary.

The "open problems" review of the field (Sharkey et al. 2025) asks which decomposition to trust for what; this
puts them side by side. Every row is one decomposition of one site, every column one question:

* faithfulness: `fvu` (variance of the site left unexplained), and the model's output with the decomposition
  spliced in — on a toy `output_change` (‖f_spliced − f‖² / ‖f‖²) and `loss_increase` (task loss), on a language
  model `ce_increase`, `kl` and `loss_recovered` (`anatomist.evaluate.evaluate_dictionary`);
* sparsity: `l0`, `dead` and `dense` fractions of latents;
* description length: `bits_per_input` of the code, entropy-coded at the precision that keeps FVU ≤ 0.1
  (`anatomist.dictionaries.mdl`, Ayonrinde et al. 2024);
* ground truth (toys): `mmcs` and `ml2r` of the decoder directions (a transcoder: its encoder directions, what it
  reads) against the toy's true feature directions; SPD against the toy's true rank-one pieces;
* robustness: on a language model, measured on the model itself (`anatomist.stress.lm_reparam`): `reparam_mmcs`,
  how well the decomposition refitted on an exactly reparameterised copy (residual stream rotated, MLP units
  permuted and rescaled) matches it once mapped back, beside `reparam_control`, how well it matches itself refitted
  with another seed; on a toy, `stress_robustness`: the share of stress cells the same lens passed, read from a
  `stress` run when given;
* interpretability (language models): `keyword`, the judge-free keyword proxy of `anatomist.interpret.autointerp`
  (detection balanced accuracy of "the context fires iff it holds the feature's peak token"), and `simulation`
  where a judge is configured, each the mean over sampled features, computed by the `autointerp` run's pipeline.

Dense bases (neurons, PCA, ICA, random) are rows too: every latent is "active" on every input, so their L0 is the
site's width and their code is priced the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from anatomist.core.errors import AnatomistError
from anatomist.core.io import load_json
from anatomist.dictionaries.fit import fit_rows
from anatomist.dictionaries.mdl import description_length
from anatomist.evaluate.metrics import dead_fraction, dense_fraction, fvu
from anatomist.evaluate.recovery import match
from anatomist.features.base import SAEConfig, SparseDictionary
from anatomist.features.bases import BASES, fit_basis
from anatomist.nets.sites import Site, capture, splice
from anatomist.stress.lenses import fit_transcoder

# toy family -> (the site where its features live, the site a transcoder from there predicts)
TOY_SITES = {"tms": ("linear1", "linear2"), "resid_mlp": ("layers.0.mlp_in:input", "layers.0.mlp_out")}
# compare's names -> the stress table's lens of the same method ("neurons" at a residual site = its axes)
STRESS_LENS = {"sae_topk": "sae_topk", "sae_jumprelu": "sae_jumprelu", "transcoder": "transcoder", "spd": "spd",
               "neurons": "resid_axes"}
COLUMNS = ("fvu", "output_change", "loss_increase", "ce_increase", "kl", "loss_recovered", "l0", "dead", "dense",
           "bits_per_input", "mmcs", "ml2r", "reparam_mmcs", "reparam_control", "stress_robustness", "keyword",
           "simulation")


def dictionary_config(name: str, d_in: int, d_sae: int, k: int, d_out: int | None = None) -> SAEConfig:
    """The SAE of a decomposition name: sae_topk / transcoder (TopK), sae_jumprelu, sae_relu (L1)."""
    base: dict[str, Any] = {"d_in": d_in, "d_sae": d_sae, "d_out": d_out}
    if name in ("sae_topk", "transcoder"):
        return SAEConfig.parse(base | {"arch": "topk", "k": k, "sparse_kernel": False})
    if name == "sae_jumprelu":
        return SAEConfig.parse(base | {"arch": "jumprelu", "l0_coeff": 0.3, "jumprelu_init_threshold": 0.05,
                                       "jumprelu_bandwidth": 0.05})
    if name == "sae_relu":
        return SAEConfig.parse(base | {"arch": "relu", "l1_coeff": 5.0})
    raise AnatomistError(f"unknown decomposition '{name}'; known: sae_topk, sae_jumprelu, sae_relu, transcoder, "
                         f"spd (toys), {', '.join(BASES)}")


@torch.no_grad()
def code_numbers(sae: SparseDictionary, x: Tensor, y: Tensor) -> dict[str, Any]:
    """FVU, L0, dead/dense fractions and description length of a dictionary's code of rows x (target y)."""
    acts = sae.encode(x)
    recon = sae.decode(acts)
    rates = (acts != 0).float().mean(0)
    numbers: dict[str, Any] = {"fvu": fvu(y, recon), "l0": float((acts != 0).float().sum(-1).mean()),
                               "dead": dead_fraction(rates), "dense": dense_fraction(rates)}
    if not sae.cfg.is_transcoder:
        numbers["bits_per_input"] = description_length(sae, x)["code_bits_per_input"]
    return numbers


def truth_numbers(truth: Tensor | None, directions: Tensor) -> dict[str, Any]:
    """MMCS of a dictionary's directions with the true feature directions (no ML2R: decoder rows have unit norm,
    so their norm ratio says nothing; SPD's pieces carry norms and get it)."""
    if truth is None or truth.shape[1] != directions.shape[1]:
        return {}
    return {"mmcs": match(truth.float(), directions.float()).mmcs}


def directions_of(sae: SparseDictionary, basis: bool) -> Tensor:
    """What a decomposition's latents point at in its input's space: decoder rows (both signs for a basis, whose
    coordinates are signed), or for a transcoder its encoder directions."""
    if sae.cfg.is_transcoder:
        return sae.W_enc.detach().T
    rows = sae.W_dec.detach()
    return torch.cat([rows, -rows]) if basis else rows


# --- toys ----------------------------------------------------------------------------------------------------


@dataclass
class ToyData:
    """A trained toy's inputs, the rows of its feature site and of the transcoder's target, the clean outputs."""

    model: nn.Module
    x: Tensor
    labels: Tensor
    site: Site
    target: Site
    rows: Tensor
    target_rows: Tensor
    clean: Tensor
    loss: Callable[[Tensor, Tensor], Tensor]
    truth: Tensor | None


def toy_data(toy: Any, n: int, seed: int) -> ToyData:
    family = toy.config.kind
    if family not in TOY_SITES:
        raise AnatomistError(f"compare on toys knows {sorted(TOY_SITES)}; '{toy.config.name}' is a {family}")
    site, target = (Site.parse(s) for s in TOY_SITES[family])
    x, labels = toy.sample_batch(n, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        got = capture(toy.model, x, [site, target])
        clean = toy.model(x)
    return ToyData(toy.model, x, labels, site, target, got[site], got[target], clean, toy.config.loss,
                   toy.ground_truth.feature_directions)


@torch.no_grad()
def spliced_numbers(data: ToyData, sae: SparseDictionary) -> dict[str, float]:
    """Output change and task-loss increase with the dictionary's reconstruction in place of its target site."""
    write = data.target if sae.cfg.is_transcoder else data.site
    recon = sae.decode(sae.encode(data.rows))
    with splice(data.model, {write: lambda value: recon.to(value.dtype)}):
        out = data.model(data.x)
    change = float((out - data.clean).pow(2).sum() / data.clean.pow(2).sum())
    loss = float(data.loss(out, data.labels) - data.loss(data.clean, data.labels))
    return {"output_change": change, "loss_increase": loss}


def fit_on_rows(name: str, rows: Tensor, target_rows: Tensor | None, *, d_sae: int, k: int, steps: int, seed: int,
                batch_size: int = 1024) -> SparseDictionary:
    """A decomposition `name` fitted on rows in memory (a transcoder: rows -> target_rows)."""
    d = rows.shape[1]
    if name in BASES:
        return fit_basis(name, rows, seed=seed)  # type: ignore[arg-type]
    if name == "transcoder":
        if target_rows is None:
            raise AnatomistError("a transcoder needs the rows of its target site")
        cfg = dictionary_config(name, d, d_sae, k, d_out=target_rows.shape[1])
        return fit_transcoder(rows, target_rows, cfg, steps=steps, batch_size=batch_size, seed=seed)
    return fit_rows(rows, dictionary_config(name, d, d_sae, k), steps=steps, batch_size=batch_size, lr=3e-3,
                    seed=seed)


def fit_toy_dictionary(name: str, data: ToyData, d_sae: int, k: int, steps: int, seed: int,
                       batch_size: int = 1024) -> SparseDictionary:
    return fit_on_rows(name, data.rows, data.target_rows, d_sae=d_sae, k=k, steps=steps, seed=seed,
                       batch_size=batch_size)


def toy_row(name: str, data: ToyData, d_sae: int, k: int, steps: int, seed: int,
            batch_size: int = 1024) -> dict[str, Any]:
    sae = fit_toy_dictionary(name, data, d_sae, k, steps, seed, batch_size)
    y = data.target_rows if sae.cfg.is_transcoder else data.rows
    return {**code_numbers(sae, data.rows, y), **spliced_numbers(data, sae),
            **truth_numbers(data.truth, directions_of(sae, name in BASES))}


# --- stress robustness and the report --------------------------------------------------------------------------


def stress_robustness(stress_run: str | Path | None) -> dict[str, float]:
    """Per lens of a finished `stress` run: the share of its cells (n/a left out) whose verdict is "found"."""
    if stress_run is None:
        return {}
    path = Path(stress_run) / "metrics.json"
    if not path.is_file():
        raise AnatomistError(f"stress_run {stress_run}: no metrics.json (run `anatomist run stress` there first)")
    verdicts = load_json(path).get("tables", {}).get("verdicts")
    if not isinstance(verdicts, Mapping):
        raise AnatomistError(f"{path}: not a stress run's metrics (no 'verdicts' table)")
    out = {}
    for lens, row in verdicts.items():
        judged = [v for v in row.values() if v != "n/a"]
        if judged:
            out[lens] = sum(v == "found" for v in judged) / len(judged)
    return out


def add_robustness(rows: dict[str, dict[str, Any]], robustness: Mapping[str, float]) -> None:
    for name, row in rows.items():
        lens = STRESS_LENS.get(name, "")
        if lens in robustness:
            row["stress_robustness"] = robustness[lens]


def columns(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The shared columns some row has, in the vocabulary's order."""
    return [c for c in COLUMNS if any(r.get(c) is not None for r in rows.values())]


def markdown(rows: Mapping[str, Mapping[str, Any]]) -> str:
    cols = columns(rows)
    lines = ["| decomposition | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, r in rows.items():
        cells = ["" if r.get(c) is None else f"{r[c]:.3g}" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
