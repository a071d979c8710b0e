"""Train a toy, save/load it, and cache trained toys on disk by config hash.

A saved toy is three files (in a cache folder, or beside a `toy-train` run's own files); `toy.json` is
written last, so its presence marks a complete toy (a killed run leaves none and is retrained, never
half-loaded):

    toy.yaml             the full ToyConfig (architecture, data, recipe, seed)
    model.safetensors    the model's state_dict (TMS: W once, as linear1.weight; ResidMLP: W_E too)
    toy.json             final_loss, wall_time_s, loss_curve, baselines, ...
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from anatomist.core.device import resolve_device
from anatomist.core.errors import AnatomistError
from anatomist.core.io import load_json, load_tensors, save_json, save_tensors
from anatomist.core.paths import cache_dir
from anatomist.core.progress import progress
from anatomist.core.threads import torch_threads
from anatomist.nets.toys.base import ToyConfig
from anatomist.nets.toys.ground_truth import GroundTruth
from anatomist.nets.toys.llama_lm import LlamaLMConfig
from anatomist.nets.toys.moe_lm import MoELMConfig, train_moe_lm
from anatomist.nets.toys.registry import load_toy_config, toy_config
from anatomist.nets.toys.resid_mlp import ResidMLPConfig, monosemantic_loss, naive_loss

TOY_CONFIG, TOY_RESULT = "toy.yaml", "toy.json"
EVAL_SAMPLES = 2**16
# held-out data: a generator seeded apart from the training stream (which uses config.seed)
_EVAL_SEED_OFFSET = 1_000_003


@dataclass
class TrainedToy:
    """A trained toy model with its config, data distribution and ground truth."""

    model: nn.Module
    config: ToyConfig
    final_loss: float
    metrics: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None  # the run folder it was saved to or loaded from
    from_cache: bool = False  # True when load_toy found it on disk instead of training it

    @property
    def device(self) -> torch.device:
        return next(iter(self.model.state_dict().values())).device

    def sample_batch(self, batch_size: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """`(inputs, labels)` from the toy's data distribution, on the model's device."""
        return self.config.sample_batch(batch_size, generator, self.device)

    @cached_property
    def ground_truth(self) -> GroundTruth:
        return self.config.ground_truth(self.model)

    def evaluate(self, n_samples: int = EVAL_SAMPLES, seed: int | None = None) -> float:
        return evaluate_loss(self.model, self.config, n_samples, seed)

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        save_tensors(out / "model.safetensors", self.model.state_dict(), metadata={"toy": self.config.name})
        self.config.to_yaml(out / TOY_CONFIG)
        save_json(out / TOY_RESULT, {"final_loss": self.final_loss, **self.metrics})
        self.path = out
        return out

    @classmethod
    def load(cls, run_dir: str | Path, device: str | torch.device = "cpu") -> TrainedToy:
        """Load a toy written by `save` (a cache folder, or a `toy-train` run folder)."""
        run_dir = Path(run_dir)
        config = load_toy_config(run_dir / TOY_CONFIG)
        metrics = load_json(run_dir / TOY_RESULT)
        model = config.build()
        weights = load_tensors(run_dir / "model.safetensors", required=list(model.state_dict()))
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            raise AnatomistError(f"{run_dir / 'model.safetensors'}: does not fit {config.name} ({e})") from None
        model.to(resolve_device(device)).eval()
        final_loss = float(metrics.pop("final_loss"))
        return cls(model, config, final_loss, metrics, path=run_dir)


def _resolve(name_or_config: str | ToyConfig, steps: int | None, seed: int | None) -> ToyConfig:
    config = toy_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    changes: dict[str, Any] = {}
    if steps is not None:
        changes["steps"] = steps
    if seed is not None:
        changes["seed"] = seed
    return config.replace(**changes) if changes else config


def config_hash(config: ToyConfig) -> str:
    """12 hex digits identifying everything that determines the trained weights."""
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()[:12]


@torch.no_grad()
def evaluate_loss(model: nn.Module, config: ToyConfig, n_samples: int = EVAL_SAMPLES, seed: int | None = None) -> float:
    """Mean training loss of `model` over `n_samples` fresh samples of the toy's distribution.

    The default seed is fixed per config (and differs from the training stream), so two models of
    the same toy are compared on the same held-out samples.
    """
    device = next(iter(model.state_dict().values())).device
    g = torch.Generator().manual_seed(config.seed + _EVAL_SEED_OFFSET if seed is None else seed)
    total, done = 0.0, 0
    while done < n_samples:
        b = min(config.batch_size, n_samples - done)
        x, y = config.sample_batch(b, g, device)
        total += config.loss(model(x), y).item() * b
        done += b
    return total / n_samples


def baselines(config: ToyConfig) -> dict[str, float]:
    """Reference losses a trained toy should beat (residual MLP: see `resid_mlp` docstring)."""
    if isinstance(config, ResidMLPConfig):
        return {"naive_loss": naive_loss(config), "monosemantic_loss": monosemantic_loss(config)}
    return {}


def _cpu_threads(limit: int | None, device: torch.device) -> int:
    """The thread cap for training on `device`: a toy's `max_cpu_threads` on a CPU, else no change (0)."""
    return limit if device.type == "cpu" and limit is not None and limit < torch.get_num_threads() else 0


def train_toy(
    name_or_config: str | ToyConfig,
    steps: int | None = None,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    log_every: int = 100,
    eval_samples: int = EVAL_SAMPLES,
) -> TrainedToy:
    """Train a toy from scratch (no cache; see `load_toy`). `steps`/`seed` override the config's.

    `final_loss` is the loss on `eval_samples` held-out samples (see `evaluate_loss`), not the
    last training batch's, so it is comparable across runs and with the baselines.
    """
    config = _resolve(name_or_config, steps, seed)
    dev = resolve_device(device)
    if isinstance(config, MoELMConfig | LlamaLMConfig):  # a language model: its own loop, held-out text, unigram
        with torch_threads(_cpu_threads(config.max_cpu_threads, dev)):
            lm, final, lm_metrics = train_moe_lm(config, dev, log_every)
        return TrainedToy(lm, config, final, lm_metrics)
    model = config.build().to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    # the training stream has its own generator, so results do not depend on global RNG use
    g = torch.Generator(dev).manual_seed(config.seed)

    with torch_threads(_cpu_threads(config.max_cpu_threads, dev)):
        start = time.perf_counter()
        curve: list[tuple[int, float]] = []
        running = torch.zeros((), device=dev)
        for step in progress(range(config.steps), total=config.steps, desc=f"training {config.name}"):
            for group in opt.param_groups:
                group["lr"] = config.lr_at(step)
            x, y = config.sample_batch(config.batch_size, g, dev)
            loss = config.loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.detach()  # no .item() per step: it would sync a GPU every step
            if (step + 1) % log_every == 0 or step + 1 == config.steps:
                n = (step % log_every) + 1
                curve.append((step + 1, running.item() / n))
                running.zero_()
        train_time = time.perf_counter() - start

        model.eval()
        final = evaluate_loss(model, config, eval_samples)
    metrics: dict[str, Any] = {
        "name": config.name,
        "steps": config.steps,
        "seed": config.seed,
        "device": str(dev),
        "wall_time_s": round(train_time, 3),
        "eval_samples": eval_samples,
        **baselines(config),
        **config.held_out(model),
        "loss_curve": curve,
    }
    return TrainedToy(model, config, final, metrics)


def load_toy(
    name_or_config: str | ToyConfig,
    steps: int | None = None,
    seed: int | None = None,
    device: str | torch.device = "cpu",
    retrain: bool = False,
) -> TrainedToy:
    """A trained toy from the cache, training (and caching) it first if it is not there.

    The cache folder is `cache_dir("toys", f"{name}-{config_hash}")`, so any change to the
    architecture, data, recipe or seed gets its own entry. `retrain=True` overwrites it.
    """
    config = _resolve(name_or_config, steps, seed)
    run_dir = cache_dir("toys", f"{config.name}-{config_hash(config)}")
    if not retrain and (run_dir / TOY_RESULT).is_file():
        toy = TrainedToy.load(run_dir, device)
        toy.from_cache = True
        return toy
    toy = train_toy(config, device=device)
    toy.save(run_dir)
    return toy
