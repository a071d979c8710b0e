"""Vision dashboards: top images ranked by their largest token activation, patch heatmaps, class counts, the
per-image view; and the pages in Chromium (skipped without Playwright or Chromium)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import ViTConfig, ViTModel

from anatomist.core.io import load_json
from anatomist.core.metrics import Metrics, write_metrics
from anatomist.core.provenance import data_record, model_record, write_provenance
from anatomist.features import SAEConfig, make_sae
from anatomist.nets.sites import capture
from anatomist.nets.vision import vision_layout
from anatomist.report.dashboard import IMAGES, INDEX, chunk_name
from anatomist.report.site import build_report
from anatomist.report.vision import vit_dashboard

pytestmark = pytest.mark.usefixtures("one_thread")
N_IMAGES, D_SAE, SITE = 30, 12, "layers.1"


def _setup() -> tuple[Any, Any, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = ViTModel(ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                               image_size=28, patch_size=7, num_channels=1)).eval()
    sae = make_sae(SAEConfig.parse({"arch": "topk", "d_in": 16, "d_sae": D_SAE, "k": 3}))
    images = torch.rand(N_IMAGES, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    return model, sae, images, torch.arange(N_IMAGES) % 3


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """The dashboard folder and, by brute force, every token's activations [N, 17, d_sae] and the labels."""
    model, sae, images, labels = _setup()
    out = tmp_path_factory.mktemp("vit") / "run" / "sae" / "dashboard"
    vit_dashboard(sae, out, model=model, site=SITE, images=images, layout=vision_layout(model), labels=labels,
                  classes=["zero", "one", "two"], batch=7, n_image_views=5, per_image=4, top_k=4,
                  meta={"model": "tiny-vit"})
    with torch.no_grad():
        value = next(iter(capture(model, images, [SITE]).values()))  # [N, 17, 16]
        acts = sae.encode(value.reshape(-1, 16)).view(N_IMAGES, 17, D_SAE)
    return out, acts, labels


def _latents(out: Path) -> list[dict[str, Any]]:
    index = load_json(out / INDEX)
    return [rec for c in range(index["n_chunks"]) for rec in load_json(out / chunk_name(c))["latents"]]


def test_top_images_are_ranked_by_their_largest_token_activation(dashboard: Any) -> None:
    out, acts, _ = dashboard
    peak = acts.amax(1)  # [N, d_sae]
    for rec in _latents(out):
        i = rec["i"]
        want = [r for r in peak[:, i].argsort(descending=True).tolist() if peak[r, i] > 0][:4]
        assert [ex["row"] for ex in rec["top"]] == want
        for ex in rec["top"]:
            assert ex["act"] == pytest.approx(float(peak[ex["row"], i]), abs=1e-3)


def test_heatmaps_are_the_patch_activations_row_major_with_the_cls_value(dashboard: Any) -> None:
    out, acts, _ = dashboard
    for rec in _latents(out):
        for ex in rec["top"] + rec["quantiles"]:
            a = acts[ex["row"], :, rec["i"]]
            assert ex["heat"]["grid"] == [4, 4]
            assert ex["heat"]["v"] == pytest.approx(a[1:].tolist(), abs=2e-3)  # float16 between pass and write
            assert ex["heat"]["cls"] == pytest.approx(float(a[0]), abs=2e-3)


def test_class_counts_and_role_densities(dashboard: Any) -> None:
    out, acts, labels = dashboard
    names = ["zero", "one", "two"]
    for rec in _latents(out):
        counted: dict[str, int] = {}
        for ex in rec["top"]:
            counted[names[int(labels[ex["row"]])]] = counted.get(names[int(labels[ex["row"]])], 0) + 1
        assert dict((c, n) for c, n in rec.get("classes", [])) == counted
        fired = acts[:, :, rec["i"]] > 0
        assert rec["density_by_role"]["cls"] == pytest.approx(float(fired[:, 0].float().mean()), abs=1e-3)
        assert rec["density_by_role"]["patch"] == pytest.approx(float(fired[:, 1:].float().mean()), abs=1e-3)


def test_per_image_view_lists_the_latents_that_peak_highest_on_each_image(dashboard: Any) -> None:
    out, acts, labels = dashboard
    view = load_json(out / IMAGES)
    assert [im["row"] for im in view["images"]] == list(range(5))
    for im in view["images"]:
        peak = acts[im["row"]].amax(0)
        want = [i for i in peak.topk(4).indices.tolist() if peak[i] > 0]
        assert [lat["i"] for lat in im["latents"]] == want
        assert im["label"] == int(labels[im["row"]]) and im["image"][:2] == [28, 28]
        assert im["l0_per_token"] == pytest.approx(float((acts[im["row"]] > 0).sum(-1).float().mean()), abs=1e-3)


# ------------------------------------------------------------------------------------------------ in Chromium


@pytest.fixture(scope="module")
def site(dashboard: Any) -> Path:
    out, _, _ = dashboard
    run = out.parent.parent
    write_metrics(run, "dashboard", Metrics.from_nested({"latents": D_SAE}), "a vision dashboard")
    write_provenance(run, models=[model_record("tiny-vit", torch.nn.Linear(1, 1))],
                     data=[data_record("random images", torch.zeros(N_IMAGES, 1), n_examples=N_IMAGES)],
                     config={"kind": "dashboard"}, seed=0, access=["activations"])
    return build_report(run).parent


def _browser_page() -> Any:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("Chromium is absent (apt-get install -y chromium)")
    return sync_api, chromium


def test_latent_and_image_pages_draw_heatmaps_in_chromium(site: Path, dashboard: Any) -> None:
    sync_api, chromium = _browser_page()
    out, acts, _ = dashboard
    best = max(_latents(out), key=lambda r: r["top"][0]["act"] if r["top"] else 0)
    top = best["top"][0]
    hot = max(range(16), key=lambda k: top["heat"]["v"][k])  # the hottest patch of the top image
    cold = min(range(16), key=lambda k: top["heat"]["v"][k])
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(chromium), args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = b.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((site / "features" / "sae__dashboard" / "latent.html").resolve().as_uri() + f"#{best['i']}")
        page.wait_for_selector("figure.heat canvas")
        assert "cls tokens" in page.locator("#roles").inner_text()
        assert page.locator("ul.classes li").count() == len(best["classes"])
        # the hottest patch is tinted orange (red well above blue), a patch at zero activation is not
        tint = page.evaluate("""([hot, cold]) => {
            const c = document.querySelector('figure.heat canvas'), ctx = c.getContext('2d'), s = c.width / 4;
            const at = k => ctx.getImageData((k % 4) * s + s / 2, Math.floor(k / 4) * s + s / 2, 1, 1).data;
            const h = at(hot), z = at(cold); return [h[0] - h[2], z[0] - z[2]]; }""", [hot, cold])
        assert tint[0] > 60
        assert top["heat"]["v"][cold] > 0 or abs(tint[1]) < 1
        page.goto((site / "features" / "sae__dashboard" / "images.html").resolve().as_uri())
        page.wait_for_selector(".image-view")
        assert page.locator(".image-view").count() == 5
        page.locator(".image-view a").first.click()
        page.wait_for_selector("#latent h1")
        assert page.locator("#latent h1").inner_text().startswith("Latent ")
        b.close()
    assert errors == []
