"""MDL-SAE reproduction on MNIST: sweep TopK SAEs (widths x k), price each code in bits, pick the MDL one.

Writes <out_dir>/<name>/sae for every SAE (reused when present), <out_dir>/results.json, and the pictures
docs/img/mdl_mnist_frontier.png and docs/img/mdl_mnist_atoms.png (decoder rows as 28x28 images of the MDL
choice, the narrowest and the widest SAE of the sweep).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
import yaml

from anatomist.core.io import save_json
from anatomist.core.threads import torch_threads
from anatomist.data import load_images
from anatomist.dictionaries.fit import fit_rows
from anatomist.dictionaries.mdl import MDLConfig, description_length, select_mdl
from anatomist.features import SAEConfig, load_sae, save_sae
from anatomist.runs.dictionaries_plots import plot_frontier


def atoms_figure(saes: dict[str, Any], path: Path, per_row: int = 12) -> None:
    """Decoder rows of each SAE as 28x28 images: its most used latents (by firing rate on the digits)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(saes), per_row, figsize=(per_row * 0.75, len(saes) * 0.95))
    for r, (title, (sae, rate)) in enumerate(saes.items()):
        order = rate.argsort(descending=True)[:per_row]
        for c in range(per_row):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(order):
                atom = sae.W_dec[order[c]].detach().reshape(28, 28)
                lim = float(atom.abs().max())
                ax.imshow(atom, cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[r, 0].set_title(title, fontsize=7, loc="left")
    fig.tight_layout(pad=0.2)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", type=Path)
    args = ap.parse_args()
    with torch_threads(1):
        sweep(yaml.safe_load(args.config.read_text()), str(args.config))


def sweep(spec: dict[str, Any], source: str) -> None:
    """Train (or reuse) every SAE of the grid, price each code, write results.json and the pictures."""
    out = Path(spec["out_dir"])
    mdl_cfg = MDLConfig.parse(spec["mdl"], source=f"{source}: mdl")
    x = load_images("mnist").images.flatten(1)  # [5000, 784]
    names, results, saes = [], [], {}
    grid = [(w, k) for w in spec["widths"] for k in spec["ks"] if k <= w] + [tuple(r) for r in spec.get("extra", [])]
    for width, k in grid:
        name = f"w{width}_k{k}"
        folder = out / name / "sae"
        if folder.is_dir():
            sae = load_sae(folder)
        else:
            cfg = SAEConfig(arch="topk", d_in=784, d_sae=width, k=k)
            sae = fit_rows(x, cfg, steps=spec["steps"], batch_size=spec["batch_size"], lr=spec["lr"],
                           seed=spec["seed"])
            save_sae(sae, folder, metadata={"data": "mnist", "steps": str(spec["steps"])})
        r = description_length(sae, x, mdl_cfg)
        names.append(name)
        results.append({"name": name, "k": k, **r})
        saes[name] = sae
        print(name, json.dumps({key: r[key] for key in ("fvu", "fvu_quantised", "precision_bits",
                                                        "code_bits_per_input", "bits_per_input")}), flush=True)
    best = select_mdl(results)
    code_only = select_mdl(results, key="code_bits_per_input")
    save_json(out / "results.json", {"results": results, "mdl_choice": names[best],
                                     "mdl_choice_code_only": names[code_only]})
    img = Path("docs/img")
    plot_frontier(results, names, str(img / "mdl_mnist_frontier.png"),
                  title=f"TopK SAEs on 5k MNIST digits (FVU tolerance {mdl_cfg.fvu_tolerance})")
    # pictures: both MDL choices next to the narrowest and the widest SAE at the code-only choice's k
    pick, pick_total = results[code_only], results[best]
    same_k = [r for r in results if r["k"] == pick["k"]]
    narrow, wide = min(same_k, key=lambda r: r["d_sae"]), max(same_k, key=lambda r: r["d_sae"])
    rows = {"narrowest": narrow, "MDL, code bits": pick, "MDL, + dictionary": pick_total, "widest": wide}
    with torch.no_grad():
        shown, seen = {}, set()
        for label, r in rows.items():
            if r["name"] in seen:  # e.g. the code-only choice is the widest SAE
                continue
            seen.add(r["name"])
            rate = (saes[r["name"]].encode(x) != 0).float().mean(0)
            shown[f"{label}: {r['name']} (code {r['code_bits_per_input']:.0f} bits, FVU {r['fvu']:.2f})"] = (
                saes[r["name"]], rate)
    atoms_figure(shown, img / "mdl_mnist_atoms.png")
    print("\n| SAE | L0 | FVU | B | FVU quantised | firing bits | value bits | code bits | + dictionary | bound |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        mark = " (MDL)" if r["name"] == names[code_only] else ""
        print(f"| {r['name']}{mark} | {r['l0']:.1f} | {r['fvu']:.3f} | {r['precision_bits']} | "
              f"{r['fvu_quantised']:.3f} | {r['firing_bits_per_input']:.1f} | {r['value_bits_per_input']:.1f} | "
              f"{r['code_bits_per_input']:.1f} | {r['bits_per_input']:.0f} | {r['bound_bits_per_input']:.0f} |")
    print(f"MDL choice (code bits): {names[code_only]}; with the dictionary spread over the digits: {names[best]}")


if __name__ == "__main__":
    main()
