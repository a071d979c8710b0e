"""The optimisation loop every parameter decomposition shares (SPD, APD, L3D).

A method supplies its decomposition module, an optimizer and `loss(step, batch) -> (total, terms)`;
`fit` runs the steps with the learning-rate schedule, stops with a clear error on a non-finite
loss, records averaged loss terms every `log_every` steps in `dec.history` (and reports them through
`core.progress.TrainingLog`: a line on stderr and `run_dir/metrics.jsonl`), and checkpoints
atomically (and resumes bit-for-bit) through `anatomist.core.Checkpointer`. While it runs, the
target model is frozen and in eval mode; the user's flags come back afterwards, also on error.

Data parallel (launched by torchrun; `anatomist.core.distributed`): every rank draws the same global batch
from `data` and keeps its equal slice of the rows (`my_share`); the ranks start from rank 0's decomposition,
average their gradients after each backward and their logged losses, and agree on stopping, so every rank
holds the same decomposition after every step. The methods draw their random masks for the global batch
from the shared seeded generator and keep their rows' part, and compute batch-wide steps (a batch top-k, a
batch mean, a sum inside a non-linearity) over the whole batch (`gather_rows`, `sum_over_ranks`), so N ranks
with a global batch of B train what one process with batch B trains, up to float summation order. Rank 0
alone writes checkpoints and the loss log; every rank resumes from the same checkpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from pydantic.fields import FieldInfo
from torch import Tensor, nn

from anatomist.core import distributed
from anatomist.core.checkpoint import Checkpointer
from anatomist.core.config import Config
from anatomist.core.errors import AnatomistError
from anatomist.core.progress import TrainingLog, progress

LossFn = Callable[[int, Any], tuple[Tensor, dict[str, Tensor]]]


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode with no parameter requiring grad; its own flags restored on exit."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def warmup_lr(step: int, steps: int, lr: float, warmup: float, schedule: str, cosine: str = "half") -> float:
    """Linear warm-up over the first `warmup` fraction of `steps`, then constant or cosine decay.

    `cosine="half"` decays to 0 (L3D); `"quarter"` is the APD and SPD references' cos(π/2 · t), kept for
    APD and SPD so their runs step exactly like the references'.
    """
    warm = int(steps * warmup)
    if step < warm:
        return lr * step / warm
    if schedule == "constant":
        return lr
    span = max(steps - warm - 1, 1)
    if cosine == "quarter":
        return lr * math.cos(0.5 * math.pi * (step - warm) / span)
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / span))


class FitConfig(Config):
    """The schedule every decomposition method shares: steps, batch, learning rate, seed, logging, checkpoints.

    A method's config subclasses it and sets its own defaults in the class line, e.g.
    `class APDConfig(FitConfig, defaults={"steps": 20_000})`, so the fields are declared once, here.
    """

    # the cosine after warm-up: "half" decays to 0 (L3D), "quarter" is the APD and SPD references' lr·cos(π/2 · t/T)
    cosine: ClassVar[Literal["half", "quarter"]] = "half"

    steps: int = Field(default=1000, description="Optimizer steps.", gt=0)
    batch_size: int = Field(
        default=1024, description="Inputs per step when the run draws toy data itself; `decompose` takes "
        "batches as the data iterable yields them.", gt=0
    )
    lr: float = Field(default=1e-3, description="Peak learning rate (Adam/AdamW, weight decay 0).", gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        default="cosine", description="After warm-up: 'constant', or cosine decay to 0 (SPD, APD: lr·cos(π/2 · t/T))."
    )
    lr_warmup: float = Field(default=0.0, description="Fraction of steps of linear warm-up from 0.", ge=0, lt=1)
    seed: int = Field(default=0, description="Seeds the initialisation and the method's own random draws.")
    log_every: int = Field(default=100, description="Steps between recorded loss values.", gt=0)
    checkpoint_every: int = Field(
        default=0, description="Steps between checkpoints in the run folder (0: only at the end).", ge=0
    )

    def __init_subclass__(cls, defaults: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)  # `defaults` is applied once pydantic has built the fields

    @classmethod
    def __pydantic_init_subclass__(cls, defaults: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        for name, value in (defaults or {}).items():
            cls.model_fields[name] = FieldInfo.merge_field_infos(cls.model_fields[name], default=value)
        if defaults:
            cls.model_rebuild(force=True)

    def lr_at(self, step: int) -> float:
        return warmup_lr(step, self.steps, self.lr, self.lr_warmup, self.lr_schedule, cosine=self.cosine)


def cycle(data: Iterable[Any]) -> Iterator[Any]:
    """Batches forever: an iterator is used as is; a re-iterable (list, DataLoader) restarts when it ends."""
    while True:
        n = 0
        for batch in data:
            n += 1
            yield batch
        if n == 0:
            raise AnatomistError("the data iterable yielded no batches (exhausted iterator or empty dataset)")
        if iter(data) is data:
            raise AnatomistError(f"the data iterator ran out after {n} more batches; pass a re-iterable or more data")


def fit(
    dec: Any,
    model: nn.Module,
    data: Iterable[Any],
    loss: LossFn,
    optimizer: torch.optim.Optimizer,
    config: FitConfig,
    *,
    method: str,
    run_dir: str | Path | None = None,
    resume: bool = False,
    generators: dict[str, torch.Generator] | None = None,
    callback: Callable[[int, Any, dict[str, float]], bool | None] | None = None,
) -> Any:
    """Optimise `dec` (an nn.Module with a `history` list) for `config.steps` steps; returns it.

    `callback(step, dec, row)` runs after each logged step; returning True ends training there
    (after a final checkpoint), e.g. once a known answer has been recovered.

    `generators` are saved with each checkpoint and restored on resume (the method's mask
    sampler, the caller's data generator), so a resumed run continues bit-for-bit.
    """
    steps, log_every, checkpoint_every = config.steps, config.log_every, config.checkpoint_every
    distributed.init_from_env()
    distributed.per_rank(config.batch_size, "batch_size")  # refused before any work when the ranks cannot split it
    ckpt = Checkpointer(run_dir) if run_dir is not None else None
    start = 0
    if ckpt is not None:
        ckpt.prepare(resume)
    if resume and ckpt is not None and ckpt.latest() is not None:
        state = ckpt.load(dec, optimizer, generators=generators, max_step=steps)
        start = state["step"]
        dec.history = state["extra"].get("history", [])
    distributed.check_same(start, "the step to resume from")  # ranks at different steps would wait on each other
    distributed.broadcast_module_(dec)  # one starting point for every rank, whatever its random state
    log = TrainingLog(run_dir, method, steps, start)
    if start:
        log.event({"event": "resume", "step": start})
    with frozen(model):
        batches = cycle(data)
        t0 = time.perf_counter()
        running: dict[str, float] = {}
        for step in progress(range(start, steps), total=steps - start, desc=method):
            for group in optimizer.param_groups:
                group["lr"] = config.lr_at(step)
            total, terms = loss(step, distributed.my_share(next(batches)))
            _check_finite(method, step, total, terms)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            distributed.average_gradients(dec.parameters())
            optimizer.step()
            for k, v in [("loss", total), *terms.items()]:
                running[k] = running.get(k, 0.0) + float(v.detach())
            done = step + 1
            if done % log_every == 0 or done == steps:
                n = (step % log_every) + 1
                row = {
                    "step": float(done),
                    "time_s": time.perf_counter() - t0,
                    **distributed.mean_values({k: v / n for k, v in running.items()}),
                }
                dec.history.append(row)
                log.step(done, {k: v for k, v in row.items() if k != "step"})
                running = {}
                stop = bool(callback(done, dec, row)) if callback is not None else False
                stop = bool(distributed.any_rank(torch.tensor([stop])).item())  # all ranks stop, or none
            else:
                stop = False
            if ckpt is not None and ((checkpoint_every and done % checkpoint_every == 0) or done == steps or stop):
                ckpt.save(done, dec, optimizer, generators=generators, extra={"history": dec.history})
                distributed.barrier()  # every rank goes on with the checkpoint on disk (a resume may follow)
            if stop:
                break
    return dec


def _check_finite(method: str, step: int, total: Tensor, terms: dict[str, Tensor]) -> None:
    """Stop with the terms that are not finite; under torch.distributed every rank stops when any rank's loss is
    not finite (a rank that stopped alone would leave the others waiting in the gradient average)."""
    finite = torch.isfinite(total.detach()).reshape(1)
    if bool(distributed.any_rank(~finite).item()):
        bad = [k for k, v in terms.items() if not torch.isfinite(v)]
        where = f", rank {distributed.rank()}" if distributed.world_size() > 1 else ""
        raise AnatomistError(f"{method} loss is not finite at step {step} (terms: {', '.join(bad) or 'total'}{where})")
