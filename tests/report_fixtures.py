"""Tiny run folders for the report tests: a planted dictionary on synthetic token activations (with markup in
token texts), an image dashboard, a decomposition folder, an SAE part; built in a second or two.

Numbers are written as runs write them (`anatomist.core.metrics`: metrics.json with kind, summary, numbers and
tables)."""

from __future__ import annotations

from pathlib import Path

import torch

from anatomist.core.io import save_tensors
from anatomist.core.metrics import Metrics, write_metrics
from anatomist.core.provenance import data_record, model_record, write_provenance
from anatomist.features import SAEConfig, make_sae
from anatomist.report.dashboard import Source, dashboard_pass, write_dashboard

SCRIPT_TOKEN = "<script>alert(1)</script>"
IMG_TOKEN = "<img src=x onerror=\"window.__pwned=1\">"
VOCAB = [f"tok{i}" for i in range(40)] + [SCRIPT_TOKEN, IMG_TOKEN, " hello\nworld", "&amp;"]
D_IN, D_SAE, N_SEQS, SEQ_LEN = 48, 24, 30, 12


def planted_sae(seed: int = 0) -> torch.nn.Module:
    """A TopK dictionary whose latent j fires on token j's embedding (rows of W_enc = embeddings)."""
    torch.manual_seed(seed)
    sae = make_sae(SAEConfig(arch="topk", d_in=D_IN, d_sae=D_SAE, k=2))
    return sae


def token_dashboard(out: Path, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, len(VOCAB), (N_SEQS, SEQ_LEN), generator=g)
    tokens[0, 5], tokens[1, 3] = VOCAB.index(SCRIPT_TOKEN), VOCAB.index(IMG_TOKEN)
    # near-orthogonal token embeddings of varied norms: token j's direction is read by latent j alone
    q, _ = torch.linalg.qr(torch.randn(D_IN, len(VOCAB), generator=g))  # [d_in, vocab], orthonormal columns
    emb = q.T * (1 + 2 * torch.rand(len(VOCAB), 1, generator=g)) + 0.02 * torch.randn(len(VOCAB), D_IN, generator=g)
    sae = planted_sae(seed)
    with torch.no_grad():  # latent j reads the direction of token j: its top contexts centre on token j
        sae.W_enc.copy_(emb[:D_SAE].T / emb[:D_SAE].norm(dim=1))
        sae.W_dec.copy_(emb[:D_SAE] / emb[:D_SAE].norm(dim=1, keepdim=True))
        sae.b_dec.zero_()
    # latents 0 and 1 read the markup tokens, so their top contexts show them
    with torch.no_grad():
        for j, t in ((0, SCRIPT_TOKEN), (1, IMG_TOKEN)):
            v = emb[VOCAB.index(t)]
            sae.W_enc[:, j] = v / v.norm()
    acts = emb[tokens]  # [n_seqs, seq_len, d_in]: the "site" is the token embedding itself
    positions = torch.ones(N_SEQS, SEQ_LEN, dtype=torch.bool).nonzero()
    rows = acts.reshape(-1, D_IN)
    seq = positions[:, 0]
    blocks = [(rows[s : s + 5 * SEQ_LEN], seq[s : s + 5 * SEQ_LEN]) for s in range(0, len(rows), 5 * SEQ_LEN)]
    stats = dashboard_pass(sae.encode, D_SAE, blocks, top_k=6, before=4, after=2, bins=32)
    unembed = emb  # logit effects: decoder row j through the embedding promotes token j most
    src = Source(tokens=tokens, positions=positions, decode=lambda ids: "".join(VOCAB[i] for i in ids))
    write_dashboard(out, stats, src,
                    sae.W_dec.detach(), unembed=unembed, chunk_size=10,
                    meta={"model": "synthetic", "site": "embedding"})
    return sae, tokens


def image_dashboard(out: Path) -> None:
    g = torch.Generator().manual_seed(1)
    images = torch.zeros(20, 8, 8)
    for i in range(20):  # image i has a bright bar at row i % 8
        images[i, i % 8] = 1.0
    images += 0.05 * torch.rand(20, 8, 8, generator=g)
    sae = make_sae(SAEConfig(arch="relu", d_in=64, d_sae=8))
    with torch.no_grad():  # latent r reads "bar on row r"
        w = torch.zeros(8, 64)
        for r in range(8):
            w[r, r * 8 : r * 8 + 8] = 1 / 8 ** 0.5
        sae.W_enc.copy_(w.T)
        sae.W_dec.copy_(w)
        sae.b_enc.fill_(-0.5)
        sae.b_dec.zero_()
    stats = dashboard_pass(sae.encode, 8, [(images.reshape(20, 64), torch.arange(20))], top_k=3, before=0, after=0)
    write_dashboard(out, stats, Source(images=images), sae.W_dec.detach(), meta={"model": "bars"})


def decomposition(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow(torch.eye(5).numpy())
    fig.savefig(out / "ci_heatmap.png")
    plt.close(fig)
    g = torch.Generator().manual_seed(0)
    save_tensors(out / "decomposition.safetensors", {"U.linear1": torch.randn(6, 2, generator=g),
                                                     "V.linear1": torch.randn(5, 6, generator=g)})
    metrics = {"toy": "tms-5-2", "mmcs": 0.99, "init_mmcs": 0.8, "ml2r": 1.02, "plots": ["ci_heatmap.png"],
               "layers": {"linear1": {"mmcs": 0.99, "alive": 5}}}
    write_metrics(out, "spd-toy", Metrics.from_nested(metrics), "SPD on tms-5-2: MMCS 0.99, 5 alive")


def sae_part(out: Path) -> None:
    """An SAE training part: shared measures (fvu, l0, ce_increase, dead_fraction), one of them not finite."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"fvu": 0.12, "l0": 32.0, "ce_increase": 0.05, "dead_fraction": 0.0, "kl": float("nan"), "seed": None}
    write_metrics(out, "sae-train", Metrics.from_nested(metrics), "TopK SAE on synthetic: FVU 0.12 at L0 32")


def run_folder(root: Path) -> Path:
    """A demo-like run: metrics.json, provenance.json, a feature dashboard, an image dashboard, SPD and SAE parts."""
    run = root / "run"
    sae, tokens = token_dashboard(run / "sae" / "dashboard")
    image_dashboard(run / "images" / "dashboard")
    decomposition(run / "spd")
    sae_part(run / "sae")
    numbers = Metrics.from_nested({"sae": {"d_sae": D_SAE, "fvu": 0.1}, "spd": {"mmcs": 0.99}})
    write_metrics(run, "demo", numbers, "a synthetic tour: an SAE and an SPD part")
    write_provenance(run, models=[model_record("synthetic", sae)], data=[data_record("synthetic", tokens,
                     n_tokens=tokens.numel())], config={"steps": ["sae", "spd"]}, seed=0, access=["activations"])
    return run
