"""TopK SAE training speed: anatomist vs eai-sparsify vs sae-lens, in one process on the same activations.

    python benchmarks/sae_speed.py [--steps 15] [--plain-adam] [--threads N] [--bf16 auto|on|off] [--fvu-check]
                                   [--device cpu|cuda] [--d-in 512] [--d-sae 4096] [--k 32] [--batch 4096] [--json]
    python benchmarks/sae_speed.py --gpu      # the GPU shape: d_in 2304, 16k latents, k 64, bf16, on cuda

Every library trains the same TopK SAE (by default d_in 512, 4096 latents, k 32, batch 4096 random activations,
Adam, fp32) with its own standard step (forward with dead-latent mask, loss, backward, decoder-norm handling,
optimizer step, dead tracking): sparsify's inner step as its Trainer runs it, and sae-lens's own
`SAETrainer.step`. The peers use torch's default Adam; anatomist uses the same Adam with `fused=True`
(one kernel per tensor instead of a dozen passes; `--plain-adam` adds a row without it).
On a shared machine the load drifts, so after warm-up the libraries take turns step by step, and a
library's speed is batch / its median step time. The bound takes its turn too: one dense encoder matmul
[batch, d_in] @ [d_in, d_sae] plus the top-k; no training step can do less work than that.

bf16 (where the CPU has AVX512-BF16/AMX, or on CUDA; `--bf16 on` forces it): anatomist's bf16 step (the encoder
matmul and top-k in bf16, the chosen pairs' values, decoder, backward and Adam in fp32) is measured against the
bf16 bound (the matmul and top-k in bf16), and the peers run under bf16 autocast beside it. `--fvu-check` trains
fp32 and bf16 dictionaries from one start on real SmolLM2 activations (block 6) and prints both held-out FVUs.

With --json: `tokens_per_s` and `share_of_bound` are anatomist's (median wall step), `ratio_vs_sparsify` and
`ratio_vs_saelens` its speed over theirs (absent when the peer is not installed), `bf16` (when timed) the bf16
step's speed, share of the bf16 bound and speed-up over fp32, `fvu` the check's result, and `libraries` holds
every library's figures by statistic (median wall, best wall, median CPU time).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from common import cpu_has_bf16, main, parser, say

from anatomist.features import SAEConfig, make_sae

LR = 2e-4
DEAD_AFTER_TOKENS = 10_000_000  # Gao et al.'s and sparsify's default; nothing is dead this early anyway
Step = Callable[[torch.Tensor], None]


@dataclass(frozen=True)
class Shape:
    d_in: int = 512
    d_sae: int = 4096
    k: int = 32
    batch: int = 4096


def best_time(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def anatomist_step(shape: Shape, device: str, bf16: bool = False, fused: bool = True) -> Step:
    sae = make_sae(SAEConfig(arch="topk", d_in=shape.d_in, d_sae=shape.d_sae, k=shape.k, autocast_bf16=bf16))
    sae.to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=LR, fused=fused)
    since_fired = torch.zeros(shape.d_sae, device=device)

    def step(x: torch.Tensor) -> None:
        nonlocal since_fired
        out = sae.train_forward(x, dead_mask=since_fired > DEAD_AFTER_TOKENS)
        loss = (out.recon - x).pow(2).sum(-1).mean() + out.aux_loss
        loss.backward()
        sae.before_step()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sae.after_step()
        since_fired = torch.where(out.fired, 0, since_fired + x.shape[0])

    return step


def sparsify_step(shape: Shape, device: str) -> Step:
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(shape.d_in, SparseCoderConfig(num_latents=shape.d_sae, k=shape.k), device=device)
    opt = torch.optim.Adam(sae.parameters(), lr=LR)
    since_fired = torch.zeros(shape.d_sae, dtype=torch.long, device=device)

    def step(x: torch.Tensor) -> None:  # sparsify.Trainer's inner step, without its model and data plumbing
        out = sae(x, dead_mask=since_fired > DEAD_AFTER_TOKENS)
        loss = out.fvu + (1 / 32) * out.auxk_loss
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        sae.set_decoder_norm_to_unit_norm()
        did_fire = torch.zeros(shape.d_sae, dtype=torch.bool, device=device)
        did_fire[out.latent_indices.flatten()] = True
        since_fired.add_(x.shape[0])
        since_fired[did_fire] = 0

    return step


def saelens_step(shape: Shape, device: str) -> Step:
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=shape.d_in, d_sae=shape.d_sae, k=shape.k, device=device))
    cfg = SAETrainerConfig(
        total_training_samples=10**12, train_batch_size_samples=shape.batch, lr=LR, lr_end=LR,
        dead_feature_window=DEAD_AFTER_TOKENS, device=device,
    )
    # SAETrainer.step is the public seam sae-lens's own fit() loop calls once per batch (scaling, dead and
    # frequency tracking, clipping, Adam, schedulers); fit() adds only wandb logging and the progress bar.
    trainer = SAETrainer(cfg, sae, data_provider=iter(()))

    def step(x: torch.Tensor) -> None:
        trainer.step(x)
        trainer.n_training_steps += 1

    return step


def under_autocast(step: Step, device: str) -> Step:
    """A peer's step in bf16 autocast, the way users train them in bf16."""

    def run(x: torch.Tensor) -> None:
        with torch.autocast(device, dtype=torch.bfloat16):
            step(x)

    return run


def bound_step(shape: Shape, device: str, dtype: torch.dtype) -> Step:
    """The least work a step can do in `dtype`: one encoder matmul plus the top-k."""
    w = torch.randn(shape.d_in, shape.d_sae, device=device).to(dtype)

    def step(x: torch.Tensor) -> None:
        (x.to(dtype) @ w).topk(shape.k, dim=-1, sorted=False)

    return step


PEERS = {"sparsify": (sparsify_step, "ratio_vs_sparsify"), "sae-lens": (saelens_step, "ratio_vs_saelens")}


def libraries(args: argparse.Namespace, shape: Shape, bf16: bool) -> dict[str, Step]:
    """Every step to time, the bounds first."""
    dev = args.device
    libs: dict[str, Step] = {"bound": bound_step(shape, dev, torch.float32), "anatomist": anatomist_step(shape, dev)}
    if args.plain_adam:
        libs["anatomist plain Adam"] = anatomist_step(shape, dev, fused=False)
    for peer, (make, _) in PEERS.items():
        try:
            libs[peer] = make(shape, dev)
        except ImportError:
            say(f"{peer} not installed (pip install anatomist[bench]): {peer} skipped")
    if bf16:
        libs["bound bf16"] = bound_step(shape, dev, torch.bfloat16)
        libs["anatomist bf16"] = anatomist_step(shape, dev, bf16=True)
        for peer, (make, _) in PEERS.items():
            with contextlib.suppress(ImportError):
                libs[f"{peer} bf16"] = under_autocast(make(shape, dev), dev)
    return libs


def wants_bf16(args: argparse.Namespace, shape: Shape) -> bool:
    """bf16 where it is fast (CUDA, AVX512-BF16/AMX) or forced; otherwise one line saying why it is skipped."""
    if args.bf16 == "on" or (args.bf16 == "auto" and (args.device == "cuda" or cpu_has_bf16())):
        return True
    if args.bf16 == "auto":
        x, w = torch.randn(256, shape.d_in), torch.randn(shape.d_in, shape.d_sae)
        t_mm = best_time(lambda: x @ w, repeats=2) * shape.batch / 256
        xb, wb = x.bfloat16(), w.bfloat16()
        t_bf16 = best_time(lambda: xb @ wb, repeats=2) * shape.batch / 256
        say(f"bf16: CPU lacks AVX512-BF16/AMX; a bf16 matmul of the step's size takes ~{t_bf16 * 1e3:.0f} ms "
            f"(vs {t_mm * 1e3:.0f} ms fp32): bf16 not timed (--bf16 on to force)")
    return False


@contextlib.contextmanager
def timed(device: str) -> Iterator[list[float]]:
    """Wall and process-CPU seconds of the block, the device's queue drained at both ends."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    out: list[float] = []
    yield out
    sync()
    out += [time.perf_counter() - t0, time.process_time() - c0]


def take_turns(libs: dict[str, Step], data: list[torch.Tensor], args: argparse.Namespace,
               ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and CPU seconds per step of each library; they take turns step by step, so slow and busy moments of a
    shared machine hit all of them."""
    for step in libs.values():
        for i in range(args.warmup):
            step(data[i % len(data)])
    wall: dict[str, list[float]] = {name: [] for name in libs}
    cpu: dict[str, list[float]] = {name: [] for name in libs}  # process CPU seconds (all threads)
    for i in range(args.steps):
        for name, step in libs.items():
            with timed(args.device) as t:
                step(data[i % len(data)])
            wall[name].append(t[0])
            cpu[name].append(t[1])
        say(f"step {i + 1}: " + ", ".join(f"{n} {v[-1] * 1e3:.0f} ms" for n, v in wall.items()))
    return wall, cpu


def summarise(label: str, seconds: dict[str, list[float]], stat: Callable[[list[float]], float],
              batch: int) -> dict[str, Any]:
    """Speeds by library for one statistic, each as a share of its precision's bound, printed with the ratios."""
    speed = {name: batch / stat(v) for name, v in seconds.items()}
    bounds = {"fp32": speed.pop("bound"), "bf16": speed.pop("bound bf16", None)}
    say(f"\n{label}: bound (one encoder matmul + topk) {bounds['fp32']:,.0f} tokens/s" +
        (f", bf16 {bounds['bf16']:,.0f}" if bounds["bf16"] else ""))
    table: dict[str, Any] = {"bound_tokens_per_s": round(bounds["fp32"])}
    if bounds["bf16"]:
        table["bound_bf16_tokens_per_s"] = round(bounds["bf16"])
    for name, v in speed.items():
        bound = bounds["bf16" if name.endswith("bf16") else "fp32"]
        assert bound is not None
        table[name] = {"tokens_per_s": round(v), "share_of_bound": round(v / bound, 4)}
        say(f"  {name:22s} {v:10,.0f} tokens/s   {v / bound:6.1%} of its precision's bound")
    a = speed["anatomist"]
    ratios = [f"anatomist / {p}: {a / speed[p]:.2f}x" for p in PEERS if p in speed]
    if "anatomist bf16" in speed:
        b = speed["anatomist bf16"]
        ratios += [f"anatomist bf16 / fp32: {b / a:.2f}x"]
        ratios += [f"anatomist bf16 / {p} bf16: {b / speed[p + ' bf16']:.2f}x" for p in PEERS if p + " bf16" in speed]
    if ratios:
        say("  " + "; ".join(ratios))
    return table


def fvu_check(args: argparse.Namespace, shape: Shape) -> dict[str, float]:
    """Held-out FVU of fp32 and bf16 TopK dictionaries trained from one start on SmolLM2 block-6 activations."""
    from anatomist.data import load_corpus
    from anatomist.data.store import ActivationStore
    from anatomist.nets.assets import load_model

    lm = load_model("smollm2", device=args.device)
    ids = load_corpus("wiki").tokenize(lm.tokenizer, 128, args.fvu_seqs)
    store = ActivationStore(lm.model, ids, ["model.layers.6"], exclude_bos=True, batch_size=args.fvu_batch,
                            buffer_rows=len(ids) * 127, device=args.device)
    rows = torch.cat([next(iter(r.values())) for r in store.rows_in_order()])
    rows = rows * (rows.shape[1] / rows.pow(2).sum(-1).mean()).sqrt()  # E||x||^2 = d_in, as sae-train scales
    held_out, train = rows[: len(rows) // 8], rows[len(rows) // 8 :]
    out = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        torch.manual_seed(0)
        sae = make_sae(SAEConfig(arch="topk", d_in=rows.shape[1], d_sae=args.fvu_d_sae, k=shape.k,
                                 autocast_bf16=bf16)).to(args.device)
        opt = torch.optim.Adam(sae.parameters(), lr=1e-3, fused=True)
        g = torch.Generator().manual_seed(1)
        for _ in range(args.fvu_steps):
            x = train[torch.randint(len(train), (args.fvu_batch,), generator=g)]
            o = sae.train_forward(x)
            opt.zero_grad(set_to_none=True)
            (o.recon - x).pow(2).sum(-1).mean().backward()
            sae.before_step()
            opt.step()
            sae.after_step()
        with torch.no_grad():
            err = (sae.decode(sae.encode(held_out)) - held_out).pow(2).sum()
            out[name] = float(err / (held_out - held_out.mean(0)).pow(2).sum())
    out["relative_difference"] = abs(out["bf16"] - out["fp32"]) / out["fp32"]
    say(f"\nFVU after {args.fvu_steps} steps on SmolLM2 block 6 ({len(train):,} rows, {args.fvu_d_sae} latents, "
        f"k {shape.k}): fp32 {out['fp32']:.4f}, bf16 {out['bf16']:.4f} "
        f"({100 * out['relative_difference']:.2f}% apart)")
    return out


def bench(args: argparse.Namespace) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    if args.gpu:
        args.device, args.d_in, args.d_sae, args.k, args.bf16 = "cuda", 2304, 16384, 64, "on"
    shape = Shape(args.d_in, args.d_sae, args.k, args.batch)
    torch.manual_seed(0)
    data = [torch.randn(shape.batch, shape.d_in, device=args.device) for _ in range(4)]  # the same for every library
    say(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}, {shape}")
    bf16 = wants_bf16(args, shape)
    wall, cpu = take_turns(libraries(args, shape, bf16), data, args)
    # median: the typical step under this machine's load; best: the least disturbed step, nearest to an idle
    # machine; CPU time: what the step costs the processor, whatever else runs (with one thread, the cleanest
    # figure on a shared machine; with several, threads waiting at barriers may count too)
    tables = {
        "median step (wall)": summarise("median step (wall)", wall, statistics.median, shape.batch),
        "best step (wall)": summarise("best step (wall)", wall, min, shape.batch),
        "median step (CPU time)": summarise("median step (CPU time)", cpu, statistics.median, shape.batch),
    }
    head = tables["median step (wall)"]
    ours = head["anatomist"]["tokens_per_s"]
    figures: dict[str, Any] = {
        "benchmark": "sae_speed", "device": args.device, "d_in": shape.d_in, "d_sae": shape.d_sae, "k": shape.k,
        "batch": shape.batch, "steps": args.steps, "tokens_per_s": ours,
        "share_of_bound": head["anatomist"]["share_of_bound"],
        **{key: round(ours / head[p]["tokens_per_s"], 3) for p, (_, key) in PEERS.items() if p in head},
    }
    if bf16:
        b = head["anatomist bf16"]
        figures["bf16"] = {"tokens_per_s": b["tokens_per_s"], "share_of_bound": b["share_of_bound"],
                           "ratio_vs_fp32": round(b["tokens_per_s"] / ours, 3)}
    if args.fvu_check:
        figures["fvu"] = fvu_check(args, shape)
    return {**figures, "libraries": tables}


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=15, help="timed steps per library (taken in turns)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per library before the rounds")
    p.add_argument("--plain-adam", action="store_true", help="also time anatomist with torch's default Adam")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                   help="also time the bf16 step (auto: on CUDA, or where the CPU has AVX512-BF16/AMX)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--d-in", type=int, default=Shape.d_in)
    p.add_argument("--d-sae", type=int, default=Shape.d_sae)
    p.add_argument("--k", type=int, default=Shape.k)
    p.add_argument("--batch", type=int, default=Shape.batch)
    p.add_argument("--gpu", action="store_true", help="the GPU shape: cuda, d_in 2304, 16384 latents, k 64, bf16 on")
    p.add_argument("--fvu-check", action="store_true", help="train fp32 and bf16 on SmolLM2 activations; print FVUs")
    p.add_argument("--fvu-steps", type=int, default=300, help="--fvu-check: steps per precision")
    p.add_argument("--fvu-seqs", type=int, default=64, help="--fvu-check: 128-token wiki sequences harvested")
    p.add_argument("--fvu-batch", type=int, default=512, help="--fvu-check: rows per step")
    p.add_argument("--fvu-d-sae", type=int, default=2048, help="--fvu-check: latents")
    main(p, bench)
