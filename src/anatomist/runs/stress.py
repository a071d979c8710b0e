"""Run kinds `stress` and `compare`: can a model hide from the lenses, and how do the lenses compare.

- stress: every lens × every stressor on the planted toy (`anatomist.stress`): a score against its threshold and
  a verdict per cell, the stressed model's output change per stressor, and the obfuscation control (fixed probe
  before/after, refitted probe). Sharkey, *Circumventing Interpretability* (2022).
- compare: one model, one dataset, several decompositions in one vocabulary (FVU, output/CE increase with the
  decomposition spliced in, L0, dead/dense, description length in bits, MMCS/ML2R on toys), as metrics and a
  report page (`anatomist.stress.compare`).
"""

from __future__ import annotations

import sys
from typing import Any, ClassVar, Literal

from pydantic import Field

from anatomist.core.provenance import data_record
from anatomist.runs.base import Context, Outcome, RunConfig, register
from anatomist.stress.lenses import LENSES, Budget
from anatomist.stress.stressors import STRESSORS
from anatomist.stress.table import check_names, markdown, stress_table

TABLE = "stress_table.md"


class StressConfig(RunConfig):
    """Stress-test lenses against stressors on a planted toy; a score and a verdict per lens × stressor."""

    kind: Literal["stress"] = "stress"
    smoke: ClassVar[tuple[str, ...]] = ("lenses=[sae_topk,probe,neurons,resid_axes,bilinear]",
                                        "stressors=[none,rotate_residual,backdoor]", "budget.sae_steps=20",
                                        "budget.rows=1024", "train_steps=5")
    lenses: list[str] = Field(default_factory=lambda: list(LENSES), description=f"lenses, of: {', '.join(LENSES)}")
    stressors: list[str] = Field(default_factory=lambda: list(STRESSORS),
                                 description=f"stressors, of: {', '.join(STRESSORS)}")
    n_features: int = Field(8, gt=1, description="planted features of the toy (residual width n + 1)")
    budget: Budget = Field(default_factory=lambda: Budget.model_validate({}), description="each lens's training")
    train_steps: int = Field(300, gt=0, description="steps of the drift and obfuscation training")
    seed: int = Field(0, description="seed of the stressors' draws and the lenses' fits")


def _say(stressor: str, lens: str, cell: dict[str, Any]) -> None:
    score = "n/a" if cell["score"] is None else f"{cell['score']:.3f}"
    print(f"stress {stressor} × {lens}: {score} {cell['verdict']}", file=sys.stderr, flush=True)


def _counts(cells: dict[str, dict[str, Any]]) -> dict[str, Any]:
    flat = [c["verdict"] for row in cells.values() for c in row.values()]
    return {v: flat.count(v) for v in ("found", "missed", "n/a")}


@register(StressConfig)
def stress(cfg: StressConfig, ctx: Context) -> Outcome:
    check_names(cfg.lenses, cfg.stressors)
    result = stress_table(cfg.lenses, cfg.stressors, cfg.budget, n_features=cfg.n_features, seed=cfg.seed,
                          train_steps=cfg.train_steps, on_cell=_say)
    (ctx.out / TABLE).write_text(markdown(result) + "\n")
    scores = {lens: {s: result["cells"][s][lens]["score"] for s in cfg.stressors} for lens in cfg.lenses}
    verdicts = {lens: {s: result["cells"][s][lens]["verdict"] for s in cfg.stressors} for lens in cfg.lenses}
    refits = {lens: {s: c[lens]["refit"] for s, c in result["cells"].items() if "refit" in c[lens]}
              for lens in cfg.lenses}
    counts = _counts(result["cells"])
    metrics = {"scores": scores, "verdicts": verdicts, "stressors": result["stressors"], "counts": counts,
               "table": TABLE}
    if any(refits.values()):
        metrics["refit_scores"] = {k: v for k, v in refits.items() if v}
    summary = (f"{len(cfg.lenses)} lenses × {len(cfg.stressors)} stressors on a {cfg.n_features}-feature planted toy: "
               f"{counts['found']} found, {counts['missed']} missed, {counts['n/a']} n/a (table in {TABLE})")
    data = [data_record("planted toy data (synthetic, sparse signed features)", n_examples=cfg.budget.rows)]
    return Outcome(metrics, summary, data=data, access=["weights", "activations", "gradients", "training_data"],
                   value=result)
