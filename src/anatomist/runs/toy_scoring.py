"""Score a parameter decomposition of a toy with known mechanisms (shared by the SPD, APD, L3D kinds).

A method plugs in two functions of the fitted object: `matrices(target) -> [C, d_out, d_in]`
and `importances(x) -> {target: [..., C]}` (`...`: the leading dims of the layer's input, [batch] on toys;
SPD: causal importances; APD: attributions; L3D: coefficients). `toy_report` turns them into the numbers the
papers report:

* per ground-truth layer: MMCS, ML2R and the worst feature's best cosine (flattened matrices);
  where the toy names a `feature_rows` layer (TMS: linear1) also the SPD paper's own scores
  (`rows_match`: each feature's row of each subcomponent against that feature's column of the
  layer's weight), which a random start already puts ≈ 0.99;
* per target: CI L0 and alive subcomponents on a batch of the toy's data, and on the toy's
  `per_feature` layers the identity pattern of the importances on one-hot inputs of magnitude 0.75,
  judged per feature: whether it is clean (each feature exactly one subcomponent on, > 0.5, its
  own), the fewest and most subcomponents on for any feature, the largest off-pattern importance;
* `identity` layers (TMS +ID's hidden): how many subcomponents the identity ends up as (alive ones, and
  of those the ones with ≥ 10 % of the largest one's norm), and how far their sum is from I;
* `owned_per_feature` layers (residual MLP's mlp_in): how many features own exactly one subcomponent
  (the paper: all 100).

What to score on which layer is the toy's ground truth (`nets.toys.ground_truth.GroundTruth`), not
a branch per toy here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from anatomist.core.provenance import data_record, model_record
from anatomist.evaluate.recovery import alive, ci_l0, cosine_matrix, identity_pattern_error, match
from anatomist.runs.base import RunConfig
from anatomist.runs.plots.ci_heatmap import plot_ci_heatmap
from anatomist.runs.plots.component_norms import plot_component_norms
from anatomist.runs.plots.cosine_matrix import plot_cosine_matrix

Matrices = Callable[[str], Tensor]
Importances = Callable[[Tensor], dict[str, Tensor]]

ONE_HOT_VALUE = 0.75
# the recovery numbers a run reports at its start and its end (flattened matrices, then the paper's TMS rows)
HEADLINE = ("mmcs", "min_cosine", "ml2r", "mmcs_rows", "min_cosine_rows", "ml2r_rows")
EVAL_SAMPLES = 4096
# TMS +ID: an alive hidden subcomponent is "large" when its norm is at least this fraction of the largest one's
LARGE_FRACTION = 0.1


class ToyExperiment(RunConfig):
    """Which toy and which of its layers a reproduction decomposes; each method's kind adds its config field."""

    toy: str = Field(default="tms-5-2", description="Toy name (see `anatomist toy list`).")
    toy_seed: int = Field(default=0, description="Seed of the trained toy (a cached toy is reused).")
    targets: list[str] | None = Field(
        default=None, description="Module-name patterns to decompose (default: the layers the paper decomposes)."
    )


def default_targets(toy: Any) -> list[str]:
    """The layers the papers decompose (the toy's ground truth names them)."""
    return list(toy.ground_truth.targets)


def toy_batches(toy: Any, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Inputs from the toy's data distribution, forever (labels are not needed: the model's output is the target)."""
    while True:
        yield toy.sample_batch(batch_size, generator)[0]


def one_hot_inputs(toy: Any) -> Tensor:
    n = toy.config.n_features
    return torch.eye(n, device=toy.device) * ONE_HOT_VALUE


def rows_match(matrices: Tensor, W: Tensor) -> dict[str, float]:
    """The SPD paper's TMS scores (the goodfire reference's): row f of each linear1 subcomponent
    (`[d_hidden]`, what feature f's input writes) against W[:, f].

    `mmcs_rows`: mean over features of the best cosine; `min_cosine_rows`: the worst feature's best
    cosine; `ml2r_rows`: mean norm ratio of that best row to W[:, f]. Only the part of a subcomponent
    that reads feature f counts, so leakage onto other inputs is invisible here (the flattened
    `match` sees it) and a random start already scores ≈ 0.99.
    """
    rows = matrices.permute(0, 2, 1)  # [C, n_features, d_hidden]
    cos = torch.nn.functional.cosine_similarity(rows, W.T[None], dim=-1)  # [C, n_features]
    best, idx = cos.max(0)  # [n_features]
    f = torch.arange(W.shape[1], device=W.device)
    ratio = rows[idx, f].norm(dim=-1) / W.T.norm(dim=-1)  # [n_features]
    return {"mmcs_rows": float(best.mean()), "min_cosine_rows": float(best.min()), "ml2r_rows": float(ratio.mean())}


@torch.no_grad()
def toy_report(toy: Any, targets: list[str], matrices: Matrices, importances: Importances) -> dict[str, Any]:
    """Recovery and sparsity numbers of a decomposition of `toy` (see the module docstring)."""
    gt = toy.ground_truth
    report: dict[str, Any] = {}
    scored = [n for n in gt.components if n in targets and n not in gt.identity]  # identity layers: by count
    for name in scored:
        m = match(gt.components[name], matrices(name))
        report[name] = {"mmcs": m.mmcs, "ml2r": m.ml2r, "min_cosine": m.worst}
    if scored:  # headline numbers: the worst over the scored layers
        report["mmcs"] = min(report[n]["mmcs"] for n in scored)
        report["min_cosine"] = min(report[n]["min_cosine"] for n in scored)
        report["ml2r"] = sum(report[n]["ml2r"] for n in scored) / len(scored)
    if gt.feature_rows in targets:
        report.update(rows_match(matrices(gt.feature_rows), gt.weights[gt.feature_rows]))

    g = torch.Generator(toy.device).manual_seed(12345)
    x = toy.sample_batch(EVAL_SAMPLES, g)[0]
    ci_data = importances(x)
    ci_onehot = importances(one_hot_inputs(toy))
    for name, ci in ci_data.items():
        row = report.setdefault(name, {})
        row["ci_l0"] = ci_l0(ci)
        row["alive"] = int(alive(torch.cat([ci, ci_onehot[name]])).sum())
        if name in gt.per_feature and ci.shape[-1] >= gt.n_features:  # one subcomponent per feature expected
            pattern = identity_pattern_error(ci_onehot[name])
            row["identity_clean"] = bool(pattern["clean"])
            row["identity_on_per_feature"] = [int(pattern["on_min"]), int(pattern["on_max"])]
            row["identity_max_off"] = pattern["max_off"]
            row["identity_n_distinct"] = int(pattern["n_distinct"])
    report["ci_l0_total"] = sum(ci_l0(ci) for ci in ci_data.values())
    for name in [n for n in gt.identity if n in targets]:  # the identity should be n pieces, all in this layer
        report[name].update(identity_report(toy, name, matrices(name), ci_data[name], ci_onehot[name]))
    for name in [n for n in gt.owned_per_feature if n in ci_onehot]:
        report[name]["per_feature_components"] = per_feature_components(ci_onehot[name])
    return report


def identity_report(toy: Any, name: str, pieces: Tensor, ci_data: Tensor, ci_onehot: Tensor) -> dict[str, Any]:
    """How many live subcomponents an identity layer became (all, and large ones) and how far their sum is from I."""
    n = toy.ground_truth.n_components[name]
    live = alive(torch.cat([ci_data, ci_onehot]))
    eye = torch.eye(n, device=toy.device)
    norms = pieces.flatten(1).norm(dim=1)
    # alive by CI but with ~no weight (a leftover that cannot change the output): counted apart
    large = live & (norms >= LARGE_FRACTION * norms[live].max()) if live.any() else live
    return {
        "n_components": int(live.sum()),
        "n_large": int(large.sum()),
        "expected": n,
        "sum_error": float((pieces[live].sum(0) - eye).norm() / eye.norm()),
        "sum_error_large": float((pieces[large].sum(0) - eye).norm() / eye.norm()),
    }


def per_feature_components(ci_onehot: Tensor, threshold: float = 0.1) -> int:
    """Features whose one-hot input switches on exactly one subcomponent that no other feature switches on."""
    on = ci_onehot > threshold  # [n_features, C]
    owners = on.sum(0)  # features per subcomponent
    single = on.sum(1) == 1
    own = (on & (owners == 1)[None, :]).any(1)
    return int((single & own).sum())


def write_toy_plots(out: Path, toy: Any, targets: list[str], matrices: Matrices, importances: Importances) -> list[str]:
    """CI heatmap on one-hot inputs, cosine matrix against the ground truth, component norms; returns file names."""

    with torch.no_grad():
        ci = importances(one_hot_inputs(toy))
        names = list(ci)
        plot_ci_heatmap(ci, out / "ci_heatmap.png")
        plot_component_norms({n: matrices(n).flatten(1).norm(dim=1) for n in names}, out / "component_norms.png")
        files = ["ci_heatmap.png", "component_norms.png"]
        gt = toy.ground_truth
        first = next((n for n in gt.components if n in names and n not in gt.identity), None)
        if first is not None:
            cos = cosine_matrix(gt.components[first], matrices(first))
            plot_cosine_matrix(cos, out / "cosine_matrix.png", title=f"{first}: true pieces vs subcomponents")
            files.append("cosine_matrix.png")
    return files


def toy_records(name: str, toy: Any, steps: int, batch_size: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What a decomposition of a toy read, for provenance.json: the toy's weights and its synthetic data."""
    data = data_record(f"{name} data distribution (synthetic, drawn fresh each step)", n_examples=steps * batch_size)
    return [model_record(name, toy.model)], [data]
