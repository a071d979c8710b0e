"""Run kind `toy-train`: train a toy with known ground truth and save it in the run folder."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from anatomist.core.provenance import model_record
from anatomist.nets.toys import TrainedToy, train_toy
from anatomist.runs.base import Context, Outcome, RunConfig, register


class ToyTrainConfig(RunConfig):
    """Train a toy model (TMS, residual MLP, MoE LM) from scratch; the run folder loads with TrainedToy.load."""

    kind: Literal["toy-train"] = "toy-train"
    toy: str = Field("tms-5-2", description="named toy (`anatomist toy list`)")
    steps: int | None = Field(None, gt=0, description="optimizer steps (null: the toy's published count)")
    seed: int = Field(0, description="seed of initialisation, fixed weights and data")
    device: str = Field("cpu", description="cpu, cuda, cuda:N or auto")


@register(ToyTrainConfig)
def train(cfg: ToyTrainConfig, ctx: Context) -> Outcome:
    toy = train_toy(cfg.toy, steps=cfg.steps, seed=cfg.seed, device=cfg.device)
    toy.save(ctx.out)
    numbers = {"final_loss": toy.final_loss, **{k: v for k, v in toy.metrics.items() if k != "loss_curve"}}
    curve = {str(step): {"loss": loss} for step, loss in toy.metrics.get("loss_curve", [])}
    extra = "".join(f", {k} {v:.4g}" for k, v in numbers.items() if k.endswith("_loss") and k != "final_loss")
    summary = (f"{cfg.toy}: held-out loss {toy.final_loss:.4g} after {toy.config.steps} steps "
               f"({toy.metrics.get('wall_time_s', 0):.1f} s{extra})")
    return Outcome({**numbers, "loss_curve": curve}, summary, models=[model_record(cfg.toy, toy.model)],
                   access=["training_data"], value=toy)
