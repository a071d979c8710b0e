"""The report in a real browser: Debian's Chromium, headless, driven by Playwright (no browser download).

Skipped, with the reason, when Playwright or /usr/bin/chromium is absent (`make setup` installs both).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import report_fixtures as fx
from anatomist.report.site import build_report

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
if not CHROMIUM.exists():
    pytest.skip("Chromium is absent: install it with `apt-get install -y chromium` (or `make setup` as root)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = fx.run_folder(tmp_path_factory.mktemp("report"))
    return build_report(run).parent


class Page:
    """A page that records console errors, page errors, dialogs (alert) and any request off file://."""

    def __init__(self, browser: Any) -> None:
        self.page = browser.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def open(self, path: Path, fragment: str = "") -> Any:
        self.page.goto(path.resolve().as_uri() + fragment)
        self.page.wait_for_load_state("load")
        return self.page

    def clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.dialogs == [], self.dialogs
        off = [u for u in self.requests if not u.startswith(("file://", "data:"))]
        assert off == [], f"requests leaving the folder: {off}"


def test_overview_and_index_load_clean(browser: Any, site: Path) -> None:
    p = Page(browser)
    page = p.open(site / "index.html")
    assert page.locator("#problems").count() == 0
    assert "activations" in page.locator(".chip.used").all_inner_texts()
    page.click("text=sae/dashboard")
    page.wait_for_selector("#latent-rows tr")
    assert page.locator("#latent-rows tr").count() == fx.D_SAE
    p.clean()


def test_search_and_sort(browser: Any, site: Path) -> None:
    p = Page(browser)
    page = p.open(site / "features" / "sae__dashboard" / "index.html")
    page.wait_for_selector("#latent-rows tr")
    page.click("th[data-key=max]")  # default sort is density; max descending now
    maxes = [float(x) for x in page.locator("#latent-rows tr td:nth-child(4)").all_inner_texts()]
    assert maxes == sorted(maxes, reverse=True) and maxes[0] > maxes[-1]
    page.click("th[data-key=max]")  # again: ascending
    maxes = [float(x) for x in page.locator("#latent-rows tr td:nth-child(4)").all_inner_texts()]
    assert maxes == sorted(maxes)
    page.fill("#search", "tok7")
    tops = page.locator("#latent-rows tr td:nth-child(5)").all_inner_texts()
    assert tops and all("tok7" in t for t in tops)
    assert len(tops) < fx.D_SAE
    page.fill("#search", "")
    assert page.locator("#latent-rows tr").count() == fx.D_SAE
    p.clean()


def test_every_latent_is_reachable_page_by_page(browser: Any, site: Path) -> None:
    """The index shows a page of rows at a time (1000; here 10, set before the page loads) and pages on to the rest."""
    p = Page(browser)
    p.page.add_init_script("window.ANATOMIST_PAGE_SIZE = 10")
    page = p.open(site / "features" / "sae__dashboard" / "index.html")
    page.wait_for_selector("#latent-rows tr")
    page.click("th[data-key=i]")  # latent number, ascending
    seen: list[str] = []
    for _ in range(fx.D_SAE):
        seen += page.locator("#latent-rows tr td:nth-child(1)").all_inner_texts()
        if page.locator("#next-page").is_disabled():
            break
        page.click("#next-page")
    assert seen == [str(i) for i in range(fx.D_SAE)]
    assert page.locator("#page-info").inner_text() == f"rows 21–{fx.D_SAE} of {fx.D_SAE}"
    page.click("#prev-page")
    assert page.locator("#latent-rows tr td:nth-child(1)").all_inner_texts()[0] == "10"
    p.clean()


def test_latent_page_renders_contexts_plots_and_links(browser: Any, site: Path) -> None:
    p = Page(browser)
    page = p.open(site / "features" / "sae__dashboard" / "latent.html", "#7")
    page.wait_for_selector(".ctx")
    # planted: latent 7 reads token 7's direction, so its top context centres on tok7 and it promotes tok7
    assert page.locator(".examples").first.locator(".tok.centre").first.inner_text() == "tok7"
    assert page.locator("ul.logits").first.locator(".tok").first.inner_text() == "tok7"
    bars = page.locator("svg.hist rect")
    assert bars.count() > 0 and any(float(b.get_attribute("height")) > 0 for b in bars.all())
    page.click("#next")
    page.wait_for_function("document.querySelector('h1').textContent === 'Latent 8'")
    page.locator("ul.near a").first.click()  # neighbours link to other latents (another chunk may load)
    page.wait_for_function("document.querySelector('h1').textContent !== 'Latent 8'")
    p.clean()


def test_images_and_plots_render(browser: Any, site: Path) -> None:
    p = Page(browser)
    page = p.open(site / "features" / "images__dashboard" / "latent.html", "#3")
    page.wait_for_selector("canvas.digit")
    # the top image of latent 3 has its bright bar on row 3: dark pixels (ink) there, light elsewhere
    ink = page.evaluate("""() => { const c = document.querySelector('canvas.digit'), s = c.width / 8;
        const px = (r) => c.getContext('2d').getImageData(s * 4, s * r + s / 2, 1, 1).data[0];
        return [px(3), px(0)]; }""")
    assert ink[0] < 60 < 200 < ink[1]
    page = p.open(site / "sections" / "spd.html")
    img = page.locator("img").first
    assert page.evaluate("(i) => i.complete && i.naturalWidth > 0", img.element_handle())
    assert "linear1" in page.locator("table").all_inner_texts()[1]
    p.clean()


def test_markup_in_tokens_is_text(browser: Any, site: Path) -> None:
    p = Page(browser)
    for latent in (0, 1):
        page = p.open(site / "features" / "sae__dashboard" / "latent.html", f"#{latent}")
        page.wait_for_selector(".ctx")
        text = page.locator("#latent").inner_text()
        assert (fx.SCRIPT_TOKEN if latent == 0 else fx.IMG_TOKEN) in text  # shown literally
        assert page.locator("#latent script, #latent img").count() == 0
        assert page.evaluate("window.__pwned") is None
    page = p.open(site / "features" / "sae__dashboard" / "index.html")
    page.fill("#search", "<script>")
    assert fx.SCRIPT_TOKEN in page.locator("#latent-rows").inner_text()
    assert page.locator("#latent-rows script").count() == 0
    p.clean()  # no alert dialog, no error


def test_broken_run_says_what_is_missing(browser: Any, tmp_path: Path) -> None:
    run = fx.run_folder(tmp_path)
    (run / "provenance.json").unlink()
    (run / "spd" / "metrics.json").write_text('{"mmcs": 0.9, ')  # truncated
    (run / "spd" / "ci_heatmap.png").write_bytes(b"not a png")
    (run / "sae" / "dashboard" / "latents_001.json").unlink()
    site = build_report(run).parent
    p = Page(browser)
    page = p.open(site / "index.html")
    problems = page.locator("#problems").inner_text()
    for name in ("provenance.json", "metrics.json", "ci_heatmap.png", "latents_001.json"):
        assert name in problems
    page = p.open(site / "features" / "sae__dashboard" / "latent.html", "#12")  # chunk 1 holds latents 10-19
    page.wait_for_selector("#error")
    assert "chunk_001.js is missing" in page.locator("#error").inner_text()
    assert "latents_001.json" in page.locator("#error").inner_text()
    # a latent in a chunk that is there still renders
    page = p.open(site / "features" / "sae__dashboard" / "latent.html", "#3")
    page.wait_for_selector(".ctx")
    shutil.rmtree(site)
