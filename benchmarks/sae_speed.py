"""TopK SAE training speed: anatomist vs eai-sparsify vs sae-lens, in one process on the same activations.

    python benchmarks/sae_speed.py [--steps 15] [--plain-adam] [--threads N] [--bf16 auto|on|off] [--json]

Every library trains the same TopK SAE (d_in 512, 4096 latents, k 32, batch 4096 random activations, Adam,
fp32) with its own standard step (forward with dead-latent mask, loss, backward, decoder-norm handling,
optimizer step, dead tracking): sparsify's inner step as its Trainer runs it, and sae-lens's own
`SAETrainer.step`. The peers use torch's default Adam; anatomist uses the same Adam with `fused=True`
(one kernel per tensor instead of a dozen passes; `--plain-adam` adds a row without it).
On a shared machine the load drifts, so after warm-up the libraries take turns step by step, and a
library's speed is batch / its median step time. The bound takes its turn too: one dense encoder matmul
[4096, 512] @ [512, 4096] plus the top-k; no training step can do less work than that.

With --json: `tokens_per_s` and `share_of_bound` are anatomist's (median wall step), `ratio_vs_sparsify` and
`ratio_vs_saelens` its speed over theirs (absent when the peer is not installed), and `libraries` holds every
library's figures by statistic (median wall, best wall, median CPU time).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from common import cpu_has_bf16, main, parser, say

from anatomist.features import SAEConfig, make_sae

D_IN, D_SAE, K, BATCH, LR = 512, 4096, 32, 4096, 2e-4
DEAD_AFTER_TOKENS = 10_000_000  # Gao et al.'s and sparsify's default; nothing is dead this early anyway


def best_time(fn: Callable[[], object], repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def anatomist_step(bf16: bool = False, fused: bool = True) -> Callable[[torch.Tensor], None]:
    sae = make_sae(SAEConfig(arch="topk", d_in=D_IN, d_sae=D_SAE, k=K, autocast_bf16=bf16))
    opt = torch.optim.Adam(sae.parameters(), lr=LR, fused=fused)
    since_fired = torch.zeros(D_SAE)

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


def sparsify_step() -> Callable[[torch.Tensor], None]:
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=K))
    opt = torch.optim.Adam(sae.parameters(), lr=LR)
    since_fired = torch.zeros(D_SAE, dtype=torch.long)

    def step(x: torch.Tensor) -> None:  # sparsify.Trainer's inner step, without its model and data plumbing
        out = sae(x, dead_mask=since_fired > DEAD_AFTER_TOKENS)
        loss = out.fvu + (1 / 32) * out.auxk_loss
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        sae.set_decoder_norm_to_unit_norm()
        did_fire = torch.zeros(D_SAE, dtype=torch.bool)
        did_fire[out.latent_indices.flatten()] = True
        since_fired.add_(x.shape[0])
        since_fired[did_fire] = 0

    return step


def saelens_step() -> Callable[[torch.Tensor], None]:
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K))
    cfg = SAETrainerConfig(
        total_training_samples=10**12, train_batch_size_samples=BATCH, lr=LR, lr_end=LR,
        dead_feature_window=DEAD_AFTER_TOKENS,
    )
    # SAETrainer.step is the public seam sae-lens's own fit() loop calls once per batch (scaling, dead and
    # frequency tracking, clipping, Adam, schedulers); fit() adds only wandb logging and the progress bar.
    trainer = SAETrainer(cfg, sae, data_provider=iter(()))

    def step(x: torch.Tensor) -> None:
        trainer.step(x)
        trainer.n_training_steps += 1

    return step


PEERS = {"sparsify": "ratio_vs_sparsify", "sae-lens": "ratio_vs_saelens"}


def bench(args: argparse.Namespace) -> dict[str, Any]:
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    data = [torch.randn(BATCH, D_IN) for _ in range(4)]  # the same activations for every library

    x, w = data[0], torch.randn(D_IN, D_SAE)
    say(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    def bound_step(x: torch.Tensor) -> None:  # the least work a step can do: one encoder matmul + the top-k
        (x @ w).topk(K, dim=-1, sorted=False)

    libs: dict[str, Callable[[torch.Tensor], None]] = {"bound": bound_step, "anatomist": anatomist_step()}
    if args.plain_adam:
        libs["anatomist plain Adam"] = anatomist_step(fused=False)
    try:
        libs["sparsify"] = sparsify_step()
    except ImportError:
        say("eai-sparsify not installed (pip install anatomist[bench]): sparsify skipped")
    try:
        libs["sae-lens"] = saelens_step()
    except ImportError:
        say("sae-lens not installed (pip install anatomist[bench]): sae-lens skipped")
    bf16 = args.bf16 == "on" or (args.bf16 == "auto" and cpu_has_bf16())
    if bf16:
        libs["anatomist bf16"] = anatomist_step(bf16=True)
    elif args.bf16 == "auto":
        t_mm = best_time(lambda: x @ w, repeats=2)
        xb, wb = x[:256].bfloat16(), w.bfloat16()
        t_bf16 = best_time(lambda: xb @ wb, repeats=2) * BATCH / 256
        say(
            f"bf16: CPU lacks AVX512-BF16/AMX; a bf16 matmul of the same size takes ~{t_bf16 * 1e3:.0f} ms "
            f"(vs {t_mm * 1e3:.0f} ms fp32): anatomist bf16 not timed (--bf16 on to force)"
        )

    for step in libs.values():
        for i in range(args.warmup):
            step(data[i % len(data)])
    # The libraries take turns step by step, so slow and busy moments of a shared machine hit all of them.
    times: dict[str, list[float]] = {name: [] for name in libs}
    cpu: dict[str, list[float]] = {name: [] for name in libs}  # process CPU seconds (all threads)
    for i in range(args.steps):
        for name, step in libs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            step(data[i % len(data)])
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
        say(f"step {i + 1}: " + ", ".join(f"{n} {v[-1] * 1e3:.0f} ms" for n, v in times.items()))

    # median: the typical step under this machine's load; best: the least disturbed step, nearest to an idle
    # machine; CPU time: what the step costs the processor, whatever else runs (with one thread, the cleanest
    # figure on a shared machine; with several, threads waiting at barriers may count too)
    stats: list[tuple[str, dict[str, list[float]], Callable[[list[float]], float]]] = [
        ("median step (wall)", times, statistics.median),
        ("best step (wall)", times, min),
        ("median step (CPU time)", cpu, statistics.median),
    ]
    libraries: dict[str, dict[str, Any]] = {}
    for label, series, stat in stats:
        speed = {name: BATCH / stat(v) for name, v in series.items()}
        bound = speed.pop("bound")
        libraries[label] = {"bound_tokens_per_s": round(bound)} | {
            name: {"tokens_per_s": round(v), "share_of_bound": round(v / bound, 4)} for name, v in speed.items()}
        say(f"\n{label}: bound (one encoder matmul + topk) {bound:,.0f} tokens/s")
        for name, v in speed.items():
            say(f"  {name:22s} {v:10,.0f} tokens/s   {v / bound:6.1%} of the bound")
        a = speed["anatomist"]
        ratios = [f"anatomist / {peer}: {a / speed[peer]:.2f}x" for peer in ("sparsify", "sae-lens") if peer in speed]
        ratios += [f"bound / {peer}: {bound / speed[peer]:.2f}x" for peer in ("sparsify", "sae-lens") if peer in speed]
        if "anatomist bf16" in speed:
            ratios.append(f"anatomist bf16 / fp32: {speed['anatomist bf16'] / a:.2f}x")
        if ratios:
            say("  " + "; ".join(ratios))
    head = libraries["median step (wall)"]
    ours = head["anatomist"]["tokens_per_s"]
    return {"benchmark": "sae_speed", "d_in": D_IN, "d_sae": D_SAE, "k": K, "batch": BATCH, "steps": args.steps,
            "tokens_per_s": ours, "share_of_bound": head["anatomist"]["share_of_bound"],
            **{key: round(ours / head[peer]["tokens_per_s"], 3) for peer, key in PEERS.items() if peer in head},
            "libraries": libraries}


if __name__ == "__main__":
    p = parser(__doc__)
    p.add_argument("--steps", type=int, default=15, help="timed steps per library (taken in turns)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per library before the rounds")
    p.add_argument("--plain-adam", action="store_true", help="also time anatomist with torch's default Adam")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                   help="also time anatomist with a bf16 encoder matmul (auto: only where the CPU has AVX512-BF16)")
    main(p, bench)
