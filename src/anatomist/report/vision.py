"""Image dashboards of a dictionary on a vision transformer's tokens: where on the image each latent fires.

A dictionary trained on per-token ViT activations (patch and CLS rows) has one activation per latent per
token. As in Prisma's dashboards (Joseph et al. 2025), an image counts with its largest token activation:
the top images and the quantile samples of a latent are ranked by that, and each is shown with the
latent's activation on every patch as a heatmap over the image (and its CLS activation beside it). Per
latent, the class counts of its top images; per token role, how often it fires (density over CLS tokens
and over patch tokens). `images.json` is the per-image view: for a few images, the latents that fire most
anywhere on them, each with its heatmap. `anatomist report` renders both (`report.feature_pages`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from anatomist.core.errors import AnatomistError
from anatomist.core.io import atomic_write_text, dumps
from anatomist.features.base import SparseDictionary
from anatomist.nets.sites import Site, capture
from anatomist.nets.vision import VisionLayout, image_hw
from anatomist.report.dashboard import IMAGES, Source, write_dashboard
from anatomist.report.stats import LatentStats


def _r3(x: float | Tensor) -> float:
    return round(float(x), 3)


class TokenActs:
    """Latent activations on every token of some images: [n_images, n_tokens, d_sae], computed in batches."""

    def __init__(self, sae: SparseDictionary, model: nn.Module, site: Site, inputs: Tensor, layout: VisionLayout,
                 batch: int) -> None:
        self.sae, self.model, self.site, self.inputs, self.layout, self.batch = sae, model, site, inputs, layout, batch

    def of(self, rows: Tensor) -> Tensor:
        """Activations of the images `rows`: [len(rows), n_tokens, d_sae]."""
        parts = [self._encode(self.inputs[rows[i : i + self.batch]]) for i in range(0, len(rows), self.batch)]
        return torch.cat(parts) if parts else torch.zeros(0, 0, 0)

    def blocks(self) -> Iterator[tuple[int, Tensor]]:
        """(first image index, activations) over all images in order."""
        for start in range(0, len(self.inputs), self.batch):
            yield start, self._encode(self.inputs[start : start + self.batch])

    @torch.no_grad()
    def _encode(self, x: Tensor) -> Tensor:
        dev = next(self.model.parameters()).device
        value = capture(self.model, x.to(dev), [self.site])[self.site]
        if value.ndim != 3 or value.shape[1] != self.layout.n_tokens(image_hw(x)):
            raise AnatomistError(f"site '{self.site}' gives {list(value.shape)}; a vision dashboard needs "
                                 f"[batch, {self.layout.n_tokens(image_hw(x))} tokens, d]")
        acts = self.sae.encode(value.reshape(-1, value.shape[-1]).float())
        return acts.view(value.shape[0], value.shape[1], -1).cpu()


def heat(acts: Tensor, layout: VisionLayout, grid: tuple[int, int]) -> dict[str, Any]:
    """One image's activations of one latent [n_tokens] as {grid, patch values row-major, cls value or None}."""
    patches = acts[layout.n_prefix :]
    return {"grid": list(grid), "v": [_r3(v) for v in patches.tolist()],
            "cls": _r3(acts[0]) if layout.has_cls else None}


class _Decorator:
    """Adds heatmaps, class counts and per-role densities to each latent's dashboard record."""

    def __init__(self, acts: Tensor, where: dict[int, int], layout: VisionLayout, grid: tuple[int, int],
                 labels: Tensor | None, classes: list[str] | None, role_density: dict[str, Tensor]) -> None:
        self.acts, self.where, self.layout, self.grid = acts, where, layout, grid
        self.labels, self.classes, self.role_density = labels, classes, role_density

    def __call__(self, i: int, rec: dict[str, Any]) -> None:
        for ex in rec["top"] + rec["quantiles"]:
            ex["heat"] = heat(self.acts[self.where[ex["row"]], :, i].float(), self.layout, self.grid)
        rec["density_by_role"] = {role: _r3(d[i]) for role, d in self.role_density.items()}
        if self.labels is not None:
            counts = Counter(int(self.labels[ex["row"]]) for ex in rec["top"])
            rec["classes"] = [[self._name(c), n] for c, n in counts.most_common()]

    def _name(self, c: int) -> str:
        return self.classes[c] if self.classes is not None and 0 <= c < len(self.classes) else str(c)


def _role_density(fires: dict[str, Tensor], counts: dict[str, int]) -> dict[str, Tensor]:
    return {role: fires[role].double() / max(counts[role], 1) for role in fires}


def _pass(acts: TokenActs, d_sae: int, layout: VisionLayout, stats_kw: dict[str, Any],
          ) -> tuple[LatentStats, dict[str, Tensor]]:
    """Stream every image: rank images by their largest token activation; count firings per token role."""
    stats = LatentStats(d_sae, before=0, after=0, **stats_kw)
    fires = {"cls": torch.zeros(d_sae, dtype=torch.long), "patch": torch.zeros(d_sae, dtype=torch.long)}
    counts = {"cls": 0, "patch": 0}
    for start, a in acts.blocks():
        stats.update(a.amax(1), torch.arange(start, start + len(a)))
        if layout.has_cls:
            fires["cls"] += (a[:, 0] > 0).sum(0)
            counts["cls"] += len(a)
        patches = a[:, layout.n_prefix :]
        fires["patch"] += (patches > 0).sum((0, 1))
        counts["patch"] += patches.shape[0] * patches.shape[1]
    if not layout.has_cls:
        del fires["cls"]
    return stats, _role_density(fires, counts)


def _example_rows(stats: LatentStats) -> Tensor:
    rows = torch.cat([stats.top_row.flatten(), stats.s_row.flatten()])
    return rows[rows >= 0].unique()


def _image_view(acts: TokenActs, images: Source, labels: Tensor | None, layout: VisionLayout,
                grid: tuple[int, int], n_images: int, per_image: int) -> dict[str, Any]:
    """The first `n_images` images, each with the `per_image` latents whose largest token activation is largest."""
    rows = torch.arange(min(n_images, len(acts.inputs)))
    a = acts.of(rows)
    out = []
    for j, row in enumerate(rows.tolist()):
        peak = a[j].amax(0)
        top = peak.topk(min(per_image, len(peak)))
        latents = [{"i": int(i), "max": _r3(v), "heat": heat(a[j, :, int(i)], layout, grid)}
                   for i, v in zip(top.indices.tolist(), top.values.tolist(), strict=True) if v > 0]
        out.append({"row": row, "label": None if labels is None else int(labels[row]), "image": images.image(row),
                    "latents": latents, "l0_per_token": _r3((a[j] > 0).sum(-1).float().mean())})
    return {"images": out}


def vit_dashboard(sae: SparseDictionary, out: str | Path, *, model: nn.Module, site: str | Site, images: Tensor,
                  layout: VisionLayout, labels: Tensor | None = None, classes: list[str] | None = None,
                  model_inputs: Tensor | None = None, batch: int = 100, n_image_views: int = 24, per_image: int = 6,
                  meta: dict[str, Any] | None = None, **stats_kw: Any) -> Path:
    """Write the image dashboard of `sae` reading per-token rows of `site` of a vision transformer.

    images [N, C, H, W] in [0, 1] are shown (C = 1 or 3); `model_inputs` (e.g. normalised) are fed to the model.
    """
    site = Site.parse(site)
    inputs = images if model_inputs is None else model_inputs
    acts = TokenActs(sae, model, site, inputs, layout, batch)
    grid = layout.grid(image_hw(inputs))
    stats, role_density = _pass(acts, sae.cfg.d_sae, layout, stats_kw)
    needed = _example_rows(stats)
    where = {int(r): j for j, r in enumerate(needed.tolist())}
    example_acts = acts.of(needed).half()  # only the images some latent shows: [n_needed, n_tokens, d_sae]
    shown = Source(images=images[:, 0] if images.shape[1] == 1 else images)
    decorate: Callable[[int, dict[str, Any]], None] = _Decorator(example_acts, where, layout, grid, labels, classes,
                                                                 role_density)
    meta = {"site": str(site), "tokens per image": layout.n_tokens(image_hw(inputs)),
            "patch grid": f"{grid[0]} x {grid[1]}", "ranked by": "largest token activation per image", **(meta or {})}
    path = write_dashboard(out, stats, shown, sae.W_dec.detach(), meta=meta, decorate=decorate)
    view = _image_view(acts, shown, labels, layout, grid, n_image_views, per_image)
    atomic_write_text(Path(out) / IMAGES, dumps({"classes": classes, **view}, separators=(",", ":")))
    return path
