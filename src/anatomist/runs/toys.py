"""Run kind `toy-train`: train a toy with known ground truth and save it in the run folder."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from anatomist.core.provenance import model_record
from anatomist.nets.toys import TMS, load_toy, train_toy
from anatomist.nets.toys.train import EVAL_SAMPLES
from anatomist.runs.base import Context, Outcome, RunConfig, register
from anatomist.runs.plots import pyplot, save_figure


class ToyTrainConfig(RunConfig):
    """Train a toy model (TMS, residual MLP, MoE LM); the run folder loads with TrainedToy.load."""

    kind: Literal["toy-train"] = "toy-train"
    toy: str = Field("tms-5-2", description="named toy (`anatomist toy list`)")
    steps: int | None = Field(None, gt=0, description="optimizer steps (null: the toy's published count)")
    seed: int = Field(0, description="seed of initialisation, fixed weights and data")
    device: str = Field("cpu", description="cpu, cuda, cuda:N or auto")
    use_cache: bool = Field(False, description="reuse the toy trained earlier with this exact config, if cached")
    eval_samples: int = Field(EVAL_SAMPLES, gt=0, description="fresh samples of the toy's data for its final loss "
                                                              "(a classifier's test set is scored whole besides)")
    smoke: ClassVar[tuple[str, ...]] = ("steps=2", "eval_samples=64", "use_cache=false")


@register(ToyTrainConfig)
def train(cfg: ToyTrainConfig, ctx: Context) -> Outcome:
    if cfg.use_cache:
        toy = load_toy(cfg.toy, steps=cfg.steps, seed=cfg.seed, device=cfg.device)
    else:
        toy = train_toy(cfg.toy, steps=cfg.steps, seed=cfg.seed, device=cfg.device, eval_samples=cfg.eval_samples)
    toy.save(ctx.out)
    numbers = {"final_loss": toy.final_loss, **{k: v for k, v in toy.metrics.items() if k != "loss_curve"}}
    curve = {str(step): {"loss": loss} for step, loss in toy.metrics.get("loss_curve", [])}
    extra = "".join(f", {k} {v:.4g}" for k, v in numbers.items() if k.endswith("_loss") and k != "final_loss")
    how = "loaded from the cache" if toy.from_cache else f"trained {toy.config.steps} steps"
    summary = f"{cfg.toy}: held-out loss {toy.final_loss:.4g} ({how}{extra})"
    if "test_accuracy" in numbers:  # a classifier: its score on the test images it never trained on
        summary += f"; accuracy {numbers['test_accuracy']:.3f} on {numbers['test_images']:.0f} held-out images"
    if isinstance(toy.model, TMS) and toy.model.W.shape[0] == 2:
        geometry = tms_geometry(toy.model.W.detach().cpu(), ctx.out / "tms_columns.png", cfg.toy)
        numbers |= geometry
        summary += f"; columns of W at angle gaps {_gaps_words(geometry['angle_gaps_deg'])}"
    return Outcome({**numbers, "loss_curve": curve}, summary, models=[model_record(cfg.toy, toy.model)],
                   access=["weights", "training_data"], value=toy)


def tms_geometry(W: torch.Tensor, plot: Path, name: str) -> dict[str, Any]:
    """A 2-D TMS's feature directions: the angle gaps between columns of W (a pentagon: 5 × 72°) and a plot."""
    angles = torch.atan2(W[1], W[0]).sort().values
    gaps = torch.diff(torch.cat([angles, angles[:1] + 2 * math.pi])) * 180 / math.pi
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3.2, 3.2))
    for i in range(W.shape[1]):
        ax.arrow(0, 0, W[0, i].item(), W[1, i].item(), head_width=0.05, length_includes_head=True, color=f"C{i}")
        ax.annotate(f"f{i}", (1.12 * W[0, i].item(), 1.12 * W[1, i].item()), ha="center", va="center")
    ax.set(xlim=(-1.4, 1.4), ylim=(-1.4, 1.4), aspect="equal", title=f"{name}: columns of W")
    save_figure(fig, plot, dpi=100)
    return {"angle_gaps_deg": [round(g, 1) for g in gaps.tolist()],
            "column_norms": [round(n, 3) for n in W.norm(dim=0).tolist()], "plot": plot.name}


def _gaps_words(gaps: list[float]) -> str:
    return f"{min(gaps):.0f}–{max(gaps):.0f}°" if max(gaps) - min(gaps) > 1 else f"{gaps[0]:.0f}° each"
