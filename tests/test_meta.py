"""Meta-SAE: decoder rows built from known meta-directions are decomposed into them."""

from __future__ import annotations

import torch

from anatomist.core import seed_everything
from anatomist.dictionaries.meta import MetaConfig, decompose, train_meta_sae
from anatomist.features import SAEConfig, make_sae

D, M, F = 32, 24, 300  # 24 atoms; the meta-SAE gets 32 latents


def test_meta_sae_recovers_planted_composition() -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(D, D, generator=g))[0][: M // 2]
    meta_dirs = torch.cat([basis, -basis])  # [24, 32] the atoms: 12 directions, both signs (rows average ~0)
    # each base decoder row is a positive mix of 1-3 atoms (2 on average) along different directions:
    # "Einstein" = scientist + German + famous
    parts = [torch.randperm(M // 2, generator=g)[: 1 + i % 3] + (M // 2) * torch.randint(2, (1 + i % 3,), generator=g)
             for i in range(F)]
    rows = torch.stack([(torch.rand(len(p), generator=g) + 0.5) @ meta_dirs[p] for p in parts])
    base = make_sae(SAEConfig(arch="relu", d_in=D, d_sae=F))
    w = base.export_weights()
    w["W_dec"] = rows / rows.norm(dim=-1, keepdim=True)
    base.import_weights(w)

    meta = train_meta_sae(base, MetaConfig(d_meta=32, k=2, steps=300, batch_size=150, lr=3e-3))
    dec = decompose(base, meta)
    assert dec.explained_variance > 0.95
    # every atom is found: some meta decoder row lies along it
    found = (meta.W_dec.detach() @ meta_dirs.T).max(0).values  # [M] best cosine per atom
    assert found.min() > 0.95
    atom_of = (meta.W_dec.detach() @ meta_dirs.T).argmax(1)  # meta-latent -> atom
    # and each base latent is decomposed into exactly its own atoms (for most latents)
    right = sum(set(atom_of[[e["meta_latent"] for e in dec.explain(i)]].tolist()) == set(parts[i].tolist())
                for i in range(F))
    assert right / F > 0.9
    # latents that share an atom are listed as sharing the meta-latent
    first = dec.explain(0)[0]
    atom = int(atom_of[first["meta_latent"]])
    assert all(atom in parts[i].tolist() for i in first["shared_with"])


def test_meta_sae_does_not_start_from_the_base_sae_init() -> None:
    # a base SAE initialised from seed 0, barely trained: its rows are still its random init
    seed_everything(0)
    base = make_sae(SAEConfig(arch="topk", d_in=D, d_sae=64, k=4))
    meta = train_meta_sae(base, MetaConfig(d_meta=8, k=2, steps=1, batch_size=64, seed=0))
    same_index = (meta.W_dec.detach() * base.W_dec.detach()[:8]).sum(-1)  # cos of meta row j, base row j
    assert same_index.abs().max() < 0.9
