"""Data parallelism over `torch.distributed`: which process this is, and the few collectives training needs.

Launch with torchrun, which starts one process per device and sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT; `init_from_env` reads them and joins the process group (gloo for CPU tensors, NCCL for CUDA ones):

    torchrun --nproc_per_node 4 -m anatomist run CONFIG.yaml --out DIR

Synchronous data-parallel SGD (Li et al. 2020, "PyTorch Distributed: Experiences on Accelerating Data Parallel
Training"): each of the N ranks takes B/N rows of every global batch of B and computes the gradient of the mean
loss over its rows; the mean of the N gradients is the gradient of the mean over all B rows, so N ranks step
exactly as one process with batch B would (up to float summation order). Everything that decides what the model
becomes (the gradient, which latents fired, statistics a forward keeps in buffers) is reduced so that every rank
holds the same model after every step; rank 0 alone writes files.

Without those variables (a plain `python` or `anatomist` process) nothing is initialised and every helper is the
identity: rank 0 of a world of 1. ANATOMIST_DIST_TIMEOUT (seconds, default 7200) bounds how long a rank waits in
a collective: long, because the other ranks wait at a barrier while rank 0 harvests an activation cache.
"""

from __future__ import annotations

import atexit
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from anatomist.core.errors import AnatomistError

T = TypeVar("T")
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_DEFAULT_TIMEOUT_S = 7200.0


_alone = False  # set by `alone()`: this rank works by itself for a while, a world of one


def is_initialized() -> bool:
    """Whether this process is in a torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the group (0 when not distributed, or inside `alone()`)."""
    return dist.get_rank() if is_initialized() and not _alone else 0


def world_size() -> int:
    """How many processes train together (1 when not distributed, or inside `alone()`)."""
    return dist.get_world_size() if is_initialized() and not _alone else 1


@contextmanager
def alone() -> Iterator[None]:
    """Inside, this rank acts as a process of its own (rank 0 of a world of 1): every collective is the identity
    and it writes its own files. For work split over ranks by a rule every rank knows (module-parallel training:
    each rank trains its own sites), where the ranks must not wait on each other."""
    global _alone
    before, _alone = _alone, True
    try:
        yield
    finally:
        _alone = before


def is_main() -> bool:
    """Whether this process is rank 0: the one that writes run folders, checkpoints, logs and caches."""
    return rank() == 0


def local_rank() -> int:
    """This process's index on its machine (torchrun's LOCAL_RANK): the CUDA device it uses."""
    return _env_int("LOCAL_RANK", 0)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise AnatomistError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None


def _timeout() -> timedelta:
    raw = os.environ.get("ANATOMIST_DIST_TIMEOUT", str(_DEFAULT_TIMEOUT_S))
    try:
        return timedelta(seconds=float(raw))
    except ValueError:
        raise AnatomistError(f"ANATOMIST_DIST_TIMEOUT={raw!r}: expected seconds, e.g. 7200") from None


def init_from_env() -> bool:
    """Join the process group torchrun describes in the environment; returns whether this process is distributed.

    A no-op (False) when the launch variables are absent, and idempotent. With CUDA, each process takes the device
    LOCAL_RANK, so `device: cuda` in a config means this rank's own GPU; CPU tensors go through gloo and CUDA
    tensors through NCCL (one group with both backends).
    """
    if is_initialized():
        return True
    missing = [v for v in LAUNCH_VARS if v not in os.environ]
    if len(missing) == len(LAUNCH_VARS):
        return False
    if missing:
        raise AnatomistError(f"torch.distributed launch: {', '.join(missing)} not set (launch with torchrun, "
                             f"which sets {', '.join(LAUNCH_VARS)} and LOCAL_RANK)")
    if not 0 <= _env_int("RANK", 0) < _env_int("WORLD_SIZE", 1):
        raise AnatomistError(f"RANK={os.environ['RANK']} is not below WORLD_SIZE={os.environ['WORLD_SIZE']}")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=_timeout())
    atexit.register(shutdown)
    return True


def shutdown() -> None:
    """Leave the process group (registered at exit by `init_from_env`)."""
    if is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here."""
    if world_size() > 1:
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block before the others do (e.g. it harvests a cache that the others then only read).

    If rank 0 fails inside, the others stay at the barrier until torchrun stops them (it stops every rank when
    one exits with an error) or the timeout.
    """
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def per_rank(n: int, what: str) -> int:
    """Rank's share of a global count `n` (a batch size): refused unless the ranks split it evenly."""
    if n % world_size():
        raise AnatomistError(f"{what} {n} does not split evenly over {world_size()} ranks: use a multiple of "
                             f"{world_size()} (each rank takes {what} / {world_size()} of every global batch)")
    return n // world_size()


def my_part(items: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous 1/world of `items` along dim 0 (rank r takes the r-th of world equal slices)."""
    share = per_rank(len(items), "batch")
    return items[rank() * share : (rank() + 1) * share]


def my_share(batch: Any) -> Any:
    """This rank's part of a global batch: `my_part` of every tensor in it (a tensor, or a tuple, list or mapping
    of tensors, each with the batch along dim 0); anything else is passed on whole."""
    if world_size() == 1:
        return batch
    if isinstance(batch, torch.Tensor):
        return my_part(batch)
    if isinstance(batch, (tuple, list)):
        return type(batch)(my_share(b) for b in batch)
    if isinstance(batch, dict):
        return {k: my_share(v) for k, v in batch.items()}
    return batch


# ---------------------------------------------------------------------------------------------
# collectives: each a no-op in a world of 1, so a plain process computes exactly what it did before


def _grouped(tensors: list[torch.Tensor]) -> dict[tuple[torch.dtype, torch.device], list[torch.Tensor]]:
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return groups


@torch.no_grad()
def average_(tensors: Iterable[torch.Tensor]) -> None:
    """Replace each tensor by its mean over the ranks, in place: one all-reduce per dtype and device (the tensors
    flattened into one buffer), not one per tensor."""
    if world_size() == 1:
        return
    for group in _grouped(list(tensors)).values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world_size()
        offset = 0
        for t in group:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average `.grad` over the ranks. A parameter that got no gradient on this rank counts as a zero gradient,
    so that every rank reduces the same tensors (in a world of 1, a missing gradient stays missing)."""
    if world_size() == 1:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    average_([p.grad for p in params if p.grad is not None])


def average_buffers(module: nn.Module) -> None:
    """Average a module's floating-point buffers over the ranks: statistics a training forward keeps (BatchTopK's
    threshold estimate), seen by each rank on its own rows, become one value shared by all."""
    average_([b for b in module.buffers() if b.is_floating_point()])


def any_rank(mask: torch.Tensor) -> torch.Tensor:
    """Elementwise OR of a boolean tensor over the ranks (e.g. which latents fired anywhere in the global batch)."""
    if world_size() == 1:
        return mask
    flags = mask.to(torch.uint8)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags.bool()


@torch.no_grad()
def gather_rows(part: torch.Tensor) -> torch.Tensor:
    """The global batch from every rank's equal part along dim 0, in rank order (the inverse of `my_part`), for a
    step that needs the whole batch: a batch top-k, a batch mean, a permutation of the batch. No gradient."""
    if world_size() == 1:
        return part
    parts = [torch.empty_like(part) for _ in range(world_size())]
    dist.all_gather(parts, part.contiguous())
    return torch.cat(parts)


class _SumOverRanks(torch.autograd.Function):
    """Sum over the ranks whose backward is the same sum: rank r's loss depends on every rank's input through the
    total, so the gradient of the total reaching rank r's input is the sum of every rank's gradient of it."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """Elementwise sum of `t` over the ranks, differentiable: a batch statistic (a sum over the global batch) that a
    loss uses non-linearly. With gradients then averaged by `average_gradients`, each rank steps with the gradient
    of the mean over ranks of their losses, as one process computing the statistic over the whole batch would."""
    if world_size() == 1:
        return t
    return _SumOverRanks.apply(t)  # type: ignore[no-any-return]


def mean_values(values: dict[str, float]) -> dict[str, float]:
    """Numbers (losses to log) averaged over the ranks, in one all-reduce."""
    if world_size() == 1:
        return values
    packed = torch.tensor(list(values.values()), dtype=torch.float64)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return dict(zip(values, (packed / world_size()).tolist(), strict=True))


@torch.no_grad()
def broadcast_module_(module: nn.Module) -> None:
    """Every rank takes rank 0's parameters and buffers (as DistributedDataParallel does at construction), so the
    ranks start from one model whatever their random state."""
    if world_size() == 1:
        return
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src=0)


def check_same(value: int, what: str) -> None:
    """Refuse to go on unless every rank holds the same integer (ranks that disagree would wait on each other)."""
    if world_size() == 1:
        return
    low, high = torch.tensor([value]), torch.tensor([value])
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if low.item() != high.item():
        raise AnatomistError(f"the ranks disagree on {what}: from {low.item()} to {high.item()} (rank {rank()} has "
                             f"{value}); every rank must read the same run folder")


def _broadcast_text(text: str) -> str:
    data = torch.tensor(list(text.encode()), dtype=torch.uint8)
    size = torch.tensor([len(data)])
    dist.broadcast(size, src=0)
    buf = data if is_main() else torch.empty(int(size.item()), dtype=torch.uint8)
    dist.broadcast(buf, src=0)
    return bytes(buf.tolist()).decode()


def main_decides(decide: Callable[[], T]) -> T:
    """Rank 0 calls `decide` (checks on files only it may touch); every rank gets its JSON-able answer, or raises
    its AnatomistError with the same message, so a refusal stops every rank instead of leaving them waiting."""
    if world_size() == 1:
        return decide()
    verdict: dict[str, Any] = {}
    error: Exception | None = None
    if is_main():
        try:
            verdict["value"] = decide()
        except Exception as e:  # said to every rank, then raised here as it was
            error, verdict["error"] = e, str(e)
    verdict = json.loads(_broadcast_text(json.dumps(verdict) if is_main() else ""))
    if error is not None:
        raise error
    if "error" in verdict:
        raise AnatomistError(verdict["error"])
    return verdict["value"]  # type: ignore[no-any-return]
