"""Training sparse dictionaries: one config, one loop, three objectives (Braun et al.).

An objective is a choice of loss terms (`anatomist.features.objectives`), each with its coefficient:

- local:  recon (mean_b ‖a − â‖²) + sparsity (+ AuxK), on shuffled activation rows (ActivationStore)
- e2e:    kl_coeff · KL(clean ‖ spliced) + sparsity, on token sequences, the SAE spliced into the frozen model
- e2e+ds: e2e + ds_coeff/(L−l) · Σ_k MSE(â^(k), a^(k)) over the L−l downstream sites k (Braun et al.; ds_form: fvu
          puts each site's FVU in place of its MSE)   (see `anatomist.features.e2e`)

Inputs are scaled so that E‖a‖² = d_in while training (the scale the sparsity coefficients of `SAEConfig`
assume); the saved dictionary has the scale folded into its weights and reads raw activations.

Everything needed to resume bit-for-bit (dictionary, optimizer, scheduler, RNG, data position, dead-latent
counters, input scales) is checkpointed atomically in `run_dir/checkpoints`; `run_dir/metrics.jsonl` is the
append-only loss log written by `core.progress.TrainingLog`, which also prints each line's numbers on stderr
(a resumed run appends a `{"event": "resume"}` line and then repeats the steps after the checkpoint: the last
line for a step counts). The final metrics are returned, not written: the `sae-train` run
kind (`anatomist.runs.features`) writes metrics.json and provenance.json.

Data parallel (launched by torchrun; `anatomist.core.distributed`): each of N ranks takes its B/N rows of every
global batch of `batch_size` rows (e2e: its `batch_seqs`/N sequences), and the ranks average their gradients,
OR their fired-latent masks and average the statistics a forward keeps (BatchTopK's threshold), so every rank holds
the same dictionary after every step and N ranks train what one process with the same batch would (up to float
summation order). Exact for per-row losses (recon, L1, L0, KL); AuxK's variance normalisation, BatchTopK's
selection and the e2e+ds fvu form use per-rank batch statistics (as BatchNorm does under DistributedDataParallel).
Rank 0 alone writes the loss log, checkpoints, the dictionary and the activation cache (the other ranks wait for
the cache, then read it); every rank resumes from the same checkpoint, so `out` (and a cache) must be on a file
system every rank sees.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from anatomist.core import (
    AnatomistError,
    Checkpointer,
    Config,
    cache_dir,
    distributed,
    load_tensors,
    progress,
    resolve_device,
    seed_everything,
)
from anatomist.core.progress import LOSS_LOG, TrainingLog
from anatomist.data import CORPUS_HELP, TEXT_FIELD_HELP, load_corpus, load_images
from anatomist.data.store import ActivationStore, position_mask
from anatomist.evaluate.dictionary import check_width, evaluate_dictionary
from anatomist.evaluate.metrics import ReconstructionStats
from anatomist.features.archs import SAEArchConfig
from anatomist.features.base import SAEConfig, SparseDictionary, make_sae
from anatomist.features.e2e import SequenceBatches, downstream_sites, e2e_step, suffix_is_exact
from anatomist.features.formats import save_sae
from anatomist.features.objectives import (
    DownstreamForm,
    DownstreamLoss,
    LossTerm,
    ObjectiveName,
    StepValues,
    objective_terms,
    total_loss,
)
from anatomist.nets.assets import load_model
from anatomist.nets.sites import Site, capture

Objective = ObjectiveName


class DataConfig(Config):
    """Token sequences from a corpus: the first `n_seqs` train, the next `eval_seqs` evaluate."""

    corpus: str = Field("wiki", description=CORPUS_HELP)
    text_field: str = Field("text", description=TEXT_FIELD_HELP)
    seq_len: int = Field(128, gt=1, description="tokens per sequence (BOS included)")
    n_seqs: int = Field(256, gt=0, description="training sequences")
    eval_seqs: int = Field(16, ge=0, description="held-out sequences for evaluation, after the training ones")
    exclude_bos: bool = Field(True, description="drop the first (BOS) position of every sequence")
    cache: str | None = Field(
        "auto", description="activation cache folder; 'auto' = under the anatomist cache, null = stream, no disk"
    )
    block_seqs: int = Field(32, gt=0, description="sequences per harvest block / cache shard")
    buffer_rows: int = Field(131_072, gt=0, description="rows in the shuffling window")
    model_batch_size: int = Field(8, gt=0, description="sequences per model forward while harvesting")
    store_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32", description="dtype of the harvested rows in the cache and the shuffling window (training reads "
        "them as float32): float16 halves a large cache's disk and memory"
    )
    inputs: str | None = Field(
        None, description="a safetensors file whose tensor 'inputs' (one row per sequence: token ids or model "
        "inputs) is used instead of the corpus: n_seqs + eval_seqs rows, the held-out ones last"
    )
    images: str | None = Field(
        None, description="a packaged image set (mnist, digits) used instead of the corpus: all its images, "
        "shuffled with seed 0 (the sets are sorted by class), the last eval_seqs held out"
    )


class TrainRecipe(Config):
    """How sparse dictionaries train on a model: everything but the site (`TrainConfig` adds it)."""

    model: str = Field(description="model to load (anatomist.nets.assets.load_model), e.g. smollm2")
    data: DataConfig = Field(
        default_factory=lambda: DataConfig.model_validate({}), description="training and evaluation tokens"
    )
    sae: SAEArchConfig = Field(description="the dictionary (its fields depend on sae.arch)")
    objective: Objective = Field(
        "local", description="local (recon MSE), e2e (KL), e2e+ds (KL + downstream reconstruction): the loss terms used"
    )
    steps: int = Field(gt=0, description="optimizer steps")
    batch_size: int = Field(4096, gt=0, description="local: activation rows per step")
    batch_seqs: int = Field(4, gt=0, description="e2e: token sequences per step")
    lr: float = Field(4e-4, gt=0, description="Adam learning rate")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up from 0")
    decay: Literal["none", "linear", "cosine"] = Field("linear", description="learning-rate decay to 0 at the end")
    decay_frac: float = Field(0.2, ge=0, le=1, description="share of the steps, at the end, over which lr decays")
    grad_clip: float | None = Field(1.0, gt=0, description="max gradient norm; null = no clipping")
    dead_tokens: int = Field(
        1_000_000, gt=0, description="a latent is dead once it has not fired for this many tokens (AuxK, metric)"
    )
    kl_coeff: float = Field(1.0, ge=0, description="e2e: weight of the KL term")
    ds_coeff: float = Field(1.0, ge=0, description="e2e+ds: weight β of the downstream reconstruction term")
    ds_form: DownstreamForm = Field(
        "mse", description="e2e+ds: mse = β/(L−l)·Σ_k MSE(â_k, a_k), the paper's (β comparable with its β); "
        "fvu = β·mean_k FVU_k, each downstream site divided by its own variance"
    )
    downstream_sites: list[str] | None = Field(
        None, description="e2e+ds: sites compared downstream; null = every later block of the site's layer stack"
    )
    normalize_inputs: bool = Field(True, description="scale activations so that E‖a‖² = d_in while training")
    init_b_dec: Literal["zeros", "mean"] = Field("mean", description="decoder bias at init: 0 or the target's mean")
    log_every: int = Field(50, gt=0, description="steps between metrics.jsonl lines")
    eval_every: int = Field(500, gt=0, description="steps between evaluations on the held-out rows")
    checkpoint_every: int = Field(500, gt=0, description="steps between checkpoints")
    eval_ce_seqs: int | None = Field(None, ge=0, description="final eval: sequences spliced for CE/KL (null = all)")
    seed: int = Field(0, description="seed of the dictionary init and every shuffle")
    device: str = Field("cpu", description="cpu, cuda, cuda:N or auto")

    @property
    def losses(self) -> tuple[LossTerm, ...]:
        """The objective's loss terms with their coefficients."""
        return objective_terms(self.objective, self.kl_coeff, self.ds_coeff, self.ds_form)

    @property
    def end_to_end(self) -> bool:
        """Trained through the model's forward (on whole sequences) rather than on activation rows."""
        return any(t.spliced for t in self.losses)


class TrainConfig(TrainRecipe):
    """One training run of one sparse dictionary."""

    site: str = Field(description="site the dictionary reads, e.g. model.layers.6 (output) or model.layers.6.mlp:input")
    target_site: str | None = Field(None, description="transcoder: site it predicts (e.g. model.layers.6.mlp:output)")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.end_to_end and self.target_site is not None:
            raise ValueError("e2e objectives train SAEs on one site; target_site (a transcoder) needs objective local")
        if (self.target_site is None) != (self.sae.d_out is None):
            raise ValueError("set sae.d_out exactly when target_site is set (a transcoder)")
        return self


# ---------------------------------------------------------------------------------------------
# the learning-rate schedule


def lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """Multiplier of the base lr at a step: linear warm-up, constant, then decay to 0 over the last decay_frac."""
    decay_start = cfg.steps - int(cfg.decay_frac * cfg.steps) if cfg.decay != "none" else cfg.steps

    def factor(step: int) -> float:
        f = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        if step >= decay_start:
            t = (step - decay_start) / max(1, cfg.steps - decay_start)
            f *= 1 - t if cfg.decay == "linear" else 0.5 * (1 + math.cos(math.pi * t))
        return f

    return factor


# ---------------------------------------------------------------------------------------------
# the loop


class _Trainee(nn.Module):
    """The dictionary plus the training state that travels with it in checkpoints."""

    since_fired: torch.Tensor

    def __init__(self, sae: SparseDictionary):
        super().__init__()
        self.sae = sae
        self.register_buffer("since_fired", torch.zeros(sae.cfg.d_sae, dtype=torch.long))  # tokens since last fired


class _WidthOnly:
    """Stands for a dictionary in width checks before one is built."""

    def __init__(self, cfg: SAEConfig):
        self.cfg = cfg


def _finite(t: torch.Tensor, what: str, step: int, site: Site, ckpt: Checkpointer) -> None:
    if not bool(torch.isfinite(t).all()):
        last = ckpt.latest()
        kept = f"last good checkpoint: step {last} in {ckpt.dir}" if last is not None else "no checkpoint yet"
        raise AnatomistError(f"step {step}: NaN or Inf in {what} at site '{site}'; training stopped ({kept})")


def _scale(rows: torch.Tensor) -> float:
    """Factor s with E‖s·a‖² = d."""
    return math.sqrt(rows.shape[1] / float(rows.double().pow(2).sum(-1).mean()))


@torch.no_grad()
def fold_scale(sae: SparseDictionary, s_in: float, s_out: float) -> None:
    """Make a dictionary trained on (s_in·x → s_out·y) read x and write y; latents come out divided by s_out.

    Exact for every positively homogeneous activation (ReLU, TopK, BatchTopK/JumpReLU thresholds scale too).
    """
    w = sae.export_weights()
    w["W_enc"] = w["W_enc"] * (s_in / s_out)
    for key in ("b_enc", "b_dec", "threshold"):
        if key in w:
            w[key] = w[key] / s_out
    sae.import_weights(w, source="fold_scale")


def load_data(cfg: TrainRecipe) -> tuple[nn.Module, torch.Tensor]:
    """The model `cfg.model` and its inputs: the tensor file `cfg.data.inputs`, else the tokenised corpus."""
    loaded = load_model(cfg.model, device=cfg.device)
    if cfg.data.inputs is not None:
        return loaded.model, load_tensors(cfg.data.inputs, required=["inputs"])["inputs"]
    if cfg.data.images is not None:
        return loaded.model, load_images(cfg.data.images).shuffled(seed=0).images
    if loaded.tokenizer is None:
        raise AnatomistError(f"model '{cfg.model}' has no tokenizer; set data.inputs to a file of token ids")
    total = cfg.data.n_seqs + cfg.data.eval_seqs
    corpus = load_corpus(cfg.data.corpus, cfg.data.text_field)
    return loaded.model, corpus.tokenize(loaded.tokenizer, cfg.data.seq_len, total)


def held_out_labels(cfg: TrainRecipe, n_eval: int) -> torch.Tensor | None:
    """The class labels of the held-out images (the last `n_eval` of `load_data`'s order), when the data is a
    labelled image set; None otherwise (token ids, an inputs file)."""
    if cfg.data.images is None or n_eval == 0:
        return None
    labels = load_images(cfg.data.images).shuffled(seed=0).labels[-n_eval:]
    return None if bool((labels < 0).any()) else labels  # a folder's unsorted images have no class


def split_held_out(cfg: TrainRecipe, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(training inputs, held-out inputs): the last `cfg.data.eval_seqs` rows are held out (at least one trains)."""
    n_eval = min(cfg.data.eval_seqs, max(0, len(inputs) - 1))
    return inputs[: len(inputs) - n_eval], inputs[len(inputs) - n_eval :]


def clear_unstarted(run_dir: Path) -> None:
    """A start with no checkpoint to continue: what an earlier attempt left before its first checkpoint (loss
    lines, a dictionary) goes, so it does not mix into this run's. Checkpointed runs are never cleared here."""
    shutil.rmtree(run_dir / "sae", ignore_errors=True)
    (run_dir / LOSS_LOG).unlink(missing_ok=True)


def train_sae(
    cfg: TrainConfig,
    run_dir: str | Path,
    model: nn.Module | None = None,
    inputs: torch.Tensor | None = None,
    *,
    resume: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[SparseDictionary, dict[str, Any]]:
    """Train (or with `resume`, continue from the newest checkpoint in `run_dir`) and evaluate one dictionary.

    model/inputs default to `load_data(cfg)`; inputs [n, seq] hold the training sequences followed by
    `cfg.data.eval_seqs` held-out ones. Returns the trained dictionary (reading raw activations, saved in
    `run_dir/sae`) and the final metrics. `on_step(step, last_logged)` runs after every step. Without `resume`,
    a folder that holds checkpoints is refused (nothing already trained is thrown away).
    """
    distributed.init_from_env()
    if cfg.end_to_end:  # refused before any harvest when the ranks cannot split the global batch evenly
        distributed.per_rank(cfg.batch_seqs, "batch_seqs")
    else:
        distributed.per_rank(cfg.batch_size, "batch_size")
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpointer(run, keep=2)
    ckpt.prepare(resume)
    if ckpt.latest() is None and distributed.is_main():
        clear_unstarted(run)
    if model is None or inputs is None:
        loaded_model, loaded_inputs = load_data(cfg)
        model, inputs = model or loaded_model, loaded_inputs if inputs is None else inputs
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    device = resolve_device(cfg.device)
    train_ids, eval_ids = split_held_out(cfg, inputs)
    site = Site.parse(cfg.site)
    target = Site.parse(cfg.target_site) if cfg.target_site else site
    store = _store(cfg, model, train_ids, site, target, device)
    losses = cfg.losses

    seed_everything(cfg.seed)
    sae = make_sae(cfg.sae).to(device)
    trainee = _Trainee(sae).to(device)
    # fused: one kernel per tensor instead of a dozen elementwise passes (~10x less optimizer time per step on CPU)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=cfg.betas, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg))
    seqs = SequenceBatches(len(train_ids), cfg.batch_seqs, cfg.seed)
    held_out = _held_out_rows(model, eval_ids, [site] if target == site else [site, target], cfg)
    if resume and ckpt.latest() is not None:
        state = ckpt.load(trainee, opt, sched, max_step=cfg.steps)
        start, extra = state["step"], state["extra"]
        store.load_state_dict(extra["store"])
        seqs.load_state_dict(extra["seqs"])
        s_in, s_out = extra["s_in"], extra["s_out"]
    else:
        start = 0
        first = _first_rows(cfg, store, int(train_ids.shape[1]) if train_ids.ndim > 1 else 1)
        s_in, s_out = _scales(cfg, first, site, target)
        # start from the mean output, as SAELens/sparsify do (no wasted early steps), unless b_dec is fixed at 0
        if cfg.init_b_dec == "mean" and sae.has_decoder_bias:
            with torch.no_grad():
                sae.b_dec.copy_(first[target].double().mean(0).to(sae.b_dec) * s_out)
    distributed.check_same(start, "the step to resume from")  # ranks at different steps would wait on each other
    distributed.broadcast_module_(trainee)  # one starting point for every rank, whatever its random state

    progress_log = TrainingLog(run, "sae", cfg.steps, start)
    if start:
        progress_log.event({"event": "resume", "step": start})
    row_batches, seq_batches = iter(store), iter(seqs)  # generators: only the one used ever runs
    skip, ds_sites = False, []
    if cfg.end_to_end:
        probe = capture(model, train_ids[:1].to(device), [site])[site]
        skip = suffix_is_exact(model, train_ids[:1].to(device), site, probe)
        if any(isinstance(t, DownstreamLoss) for t in losses):
            ds_sites = ([Site.parse(s) for s in cfg.downstream_sites] if cfg.downstream_sites is not None
                        else downstream_sites(model, site))
        progress_log.event({"event": "e2e", "skip_blocks_before_site": skip,
                                       "downstream_sites": [str(s) for s in ds_sites]})
    log: dict[str, float] = {}
    t0 = time.perf_counter()
    for step in progress(range(start + 1, cfg.steps + 1), total=cfg.steps - start, desc="train"):
        if not cfg.end_to_end:
            batch = next(row_batches)
            for s, v in batch.items():
                _finite(v, "activations", step, s, ckpt)
            x, y = batch[site], batch[target]
            out = sae.train_forward(x * s_in, y * s_out if target != site else None,
                                    dead_mask=trainee.since_fired >= cfg.dead_tokens)
            values = StepValues(out, target=y * s_out)
        else:
            idx = distributed.my_part(next(seq_batches))
            ids = train_ids[idx].to(device)
            a = _site_values(store, model, ids, idx, site)
            _finite(a, "activations", step, site, ckpt)
            values = e2e_step(sae, model, ids, a, site, ds_sites, scale=s_in, exclude_bos=cfg.data.exclude_bos,
                              skip=skip)
            out = values.out
        loss, terms = total_loss(losses, values)
        _finite(loss.detach(), "the loss", step, site, ckpt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # An explicit all-reduce of the gradients rather than DistributedDataParallel: the loop calls
        # `train_forward`, not `forward` (DDP's hooks would need a wrapper module, and its search for unused
        # parameters), the decoder-sphere projection and clipping work on `.grad` after it, and a dictionary is a
        # few large tensors, so DDP's bucketed overlap of backward and communication buys little. One averaged
        # flat buffer is the same arithmetic, serves e2e (gradients through the frozen model) unchanged, and is
        # skipped entirely in a world of 1.
        distributed.average_gradients(sae.parameters())
        sae.before_step()
        gnorm = torch.nn.utils.clip_grad_norm_(sae.parameters(), cfg.grad_clip if cfg.grad_clip else math.inf)
        _finite(gnorm, "the gradients", step, site, ckpt)
        opt.step()
        sae.after_step()
        distributed.average_buffers(sae)
        sched.step()
        with torch.no_grad():
            trainee.since_fired += out.acts.shape[0] * distributed.world_size()  # every rank: as many rows
            trainee.since_fired[distributed.any_rank(out.fired)] = 0
        if step % cfg.log_every == 0 or step == cfg.steps:
            shared = distributed.mean_values({"loss": loss.item(), **terms,
                                              "l0": float((out.acts != 0).sum(-1).float().mean())})
            log = {"step": step, **shared, "lr": float(sched.get_last_lr()[0]),
                   "grad_norm": float(gnorm),
                   "dead_fraction": float((trainee.since_fired >= cfg.dead_tokens).float().mean()),
                   "seconds": round(time.perf_counter() - t0, 2)}
            progress_log.step(step, log)
        if held_out is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
            quick = _quick_eval(sae, held_out, site, target, s_in, s_out)
            progress_log.event({"step": step, "eval": quick})
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            extra = {"store": store.state_dict(), "seqs": seqs.state_dict(), "s_in": s_in, "s_out": s_out}
            ckpt.save(step, trainee, opt, sched, extra=extra)
        if on_step is not None:
            on_step(step, log)

    fold_scale(sae, s_in, s_out)
    sae.eval()
    metadata = {"model": cfg.model, "site": str(site), "objective": cfg.objective, "steps": str(cfg.steps)}
    if target != site:
        metadata["target_site"] = str(target)
    if distributed.is_main():
        save_sae(sae, run / "sae", metadata=metadata)
    distributed.barrier()  # every rank returns with the dictionary on disk
    metrics: dict[str, Any] = {"steps": cfg.steps, "objective": cfg.objective}
    if start:  # a resumed run says so: its steps before `start` ran in an earlier process (maybe with fewer steps)
        metrics["resumed_from_step"] = start
    if len(eval_ids):
        tokens = eval_ids.ndim == 2 and not eval_ids.is_floating_point()  # spliced CE: a language model,
        labels = held_out_labels(cfg, len(eval_ids))  # or a classifier of a labelled image set
        metrics.update(evaluate_dictionary(
            sae, model, eval_ids.to(device), site, target_site=cfg.target_site, exclude_bos=cfg.data.exclude_bos,
            labels=labels, batch_size=cfg.data.model_batch_size, spliced=tokens or labels is not None,
            spliced_seqs=cfg.eval_ce_seqs,
        ))
    flat = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    progress_log.event({"step": cfg.steps, "final": flat})
    return sae, metrics


def training_tokens(cfg: TrainRecipe, train_ids: torch.Tensor) -> int:
    """Tokens (or rows) the dictionary trained on: BOS positions left out when the config drops them."""
    return int(train_ids.numel() - (len(train_ids) if cfg.data.exclude_bos and train_ids.ndim == 2 else 0))


def store_args(cfg: TrainRecipe, device: torch.device) -> dict[str, Any]:
    """ActivationStore settings of a training run (e2e stores keep BOS rows: whole sequences go through the model)."""
    return dict(
        exclude_bos=cfg.data.exclude_bos and not cfg.end_to_end, batch_size=cfg.batch_size,
        buffer_rows=cfg.data.buffer_rows, block_seqs=cfg.data.block_seqs, model_batch_size=cfg.data.model_batch_size,
        dtype=getattr(torch, cfg.data.store_dtype), model_name=cfg.model, seed=cfg.seed, device=device,
        rank=distributed.rank(), world_size=distributed.world_size(),
    )


def _store(cfg: TrainConfig, model: nn.Module, train_ids: torch.Tensor, site: Site, target: Site,
           device: torch.device) -> ActivationStore:
    """The training activations: shuffled rows (local) or whole sequences (e2e: BOS kept, sequences intact).

    A dictionary whose width does not fit the site fails here, after one small forward, before any harvest.
    """
    sites = [site] if target == site else [site, target]
    args = store_args(cfg, device)
    store = ActivationStore(model, train_ids, sites, **args)
    widths = store.widths()
    check_width(_WidthOnly(cfg.sae), site, widths[site], "input")
    check_width(_WidthOnly(cfg.sae), target, widths[target], "output")
    if cfg.data.cache is None:
        return store
    return harvested_store(model, train_ids, sites, cache_folder(cfg, store, site.module), args)


def cache_folder(cfg: TrainRecipe, store: ActivationStore, label: str) -> Path:
    """The activation cache of a run: `data.cache`, or for 'auto' a folder named by the model, `label` and the
    store's key (data and weights) under the anatomist cache."""
    if cfg.data.cache != "auto":
        return Path(str(cfg.data.cache))
    return cache_dir("activations") / f"{cfg.model}-{label}-{store.cache_key()}"


def harvested_store(model: nn.Module, train_ids: torch.Tensor, sites: list[Site], folder: Path,
                    args: dict[str, Any]) -> ActivationStore:
    """A store over the cache `folder`, harvested (one forward per batch feeding every site) unless complete."""
    with distributed.main_first():  # rank 0 harvests; the others then find the cache complete and only read it
        store = ActivationStore(model, train_ids, sites, cache=folder, **args)
        if not (distributed.is_main() or store.harvested):  # else each rank would harvest it again, all at once
            raise AnatomistError(f"{folder}: rank {distributed.rank()} does not see the activation cache that rank 0 "
                                 "harvested; across machines, set data.cache to a folder every machine shares")
        store.harvest()
    return store


def _site_values(store: ActivationStore, model: nn.Module, ids: torch.Tensor, idx: torch.Tensor, site: Site,
                 ) -> torch.Tensor:
    """Clean site values [b, seq, d] of the sequences `idx`: from the cache, else one forward stopping at the site."""
    if store.cache is None:
        return capture(model, ids, [site])[site]
    seq_len, out = ids.shape[1], []
    for i in idx.tolist():
        rows = store.block(i // store.block_seqs)[site]  # [seqs_in_block * seq_len, d], sequences in order
        out.append(rows.view(-1, seq_len, rows.shape[-1])[i % store.block_seqs])
    return torch.stack(out).to(ids.device, torch.float32)


def _first_rows(cfg: TrainConfig, store: ActivationStore, seq_len: int) -> dict[Site, torch.Tensor]:
    """The first block of training rows per site, BOS rows left out as in training."""
    first = store.block(0)
    if cfg.end_to_end and cfg.data.exclude_bos:  # the e2e store keeps BOS rows; the SAE never sees them
        first = {s: r.view(-1, seq_len, r.shape[-1])[:, 1:].reshape(-1, r.shape[-1]) for s, r in first.items()}
    return first


def _scales(cfg: TrainConfig, first: dict[Site, torch.Tensor], site: Site, target: Site) -> tuple[float, float]:
    """Input/target scales s with E‖s·a‖² = d."""
    if not cfg.normalize_inputs:
        return 1.0, 1.0
    s_in = _scale(first[site])
    if target == site or cfg.sae.centers_input:  # a centred transcoder subtracts b_dec from its input: one scale
        return s_in, s_in
    return s_in, _scale(first[target])


@torch.no_grad()
def _held_out_rows(model: nn.Module, eval_ids: torch.Tensor, sites: list[Site], cfg: TrainConfig,
                   ) -> dict[Site, torch.Tensor] | None:
    """Rows of the held-out sequences at the dictionary's sites, for the periodic evaluation."""
    if len(eval_ids) == 0:
        return None
    dev = next(iter(model.parameters()), torch.empty(0)).device
    parts: dict[Site, list[torch.Tensor]] = {s: [] for s in sites}
    for start in range(0, len(eval_ids), cfg.data.model_batch_size):
        x = eval_ids[start : start + cfg.data.model_batch_size].to(dev)
        keep = position_mask(x, None, None, cfg.data.exclude_bos)
        values = capture(model, x, sites)
        for s in sites:
            v = values[s]
            parts[s].append(v[keep] if keep is not None and v.ndim == 3 else v.reshape(-1, v.shape[-1]))
    return {s: torch.cat(p) for s, p in parts.items()}


@torch.no_grad()
def _quick_eval(sae: SparseDictionary, rows: dict[Site, torch.Tensor], site: Site, target: Site,
                s_in: float, s_out: float) -> dict[str, float]:
    stats = ReconstructionStats()
    x, y = rows[site], rows[target]
    for start in range(0, len(x), 4096):
        acts = sae.encode(x[start : start + 4096] * s_in)
        stats.update(y[start : start + 4096] * s_out, sae.decode(acts), acts)
    result = stats.result()
    result["mse"] /= s_out**2  # in the units of the raw activations, like the final evaluation
    return result
