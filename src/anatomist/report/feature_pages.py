"""The pages of one feature dashboard: a sortable, searchable index of latents and a page per latent.

The JSON the dashboard pass wrote is re-emitted as .js files that call `anatomist.data(key, obj)`, because
pages opened from file:// may load scripts but not fetch() files. A chunk that is missing or unreadable is
listed on the index and named on the latent pages that need it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anatomist.core.errors import AnatomistError
from anatomist.core.io import atomic_write_text, load_json
from anatomist.report.dashboard import FORMAT, IMAGES, INDEX, chunk_name
from anatomist.report.html import esc, js_json, kv_table, page, problems_box

EXPLANATIONS = "explanations.json"  # written beside a dashboard by an `autointerp` run


def _js(path: Path, key: str, obj: Any) -> None:
    atomic_write_text(path, f"anatomist.data({js_json(key)}, {js_json(obj)});\n")


def _explanations(dash_dir: Path, problems: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Per latent, the explanations and scores an `autointerp` run wrote beside the dashboard (explanations.json):
    {"12": [{"dictionary": name, "explanation": ..., "scores": {...}}]}; empty without the file."""
    path = dash_dir / EXPLANATIONS
    if not path.is_file():
        return {}
    try:
        doc = load_json(path)
        out: dict[str, list[dict[str, Any]]] = {}
        for name, part in doc["dictionaries"].items():
            for latent, entry in part["latents"].items():
                out.setdefault(str(latent), []).append({"dictionary": name, "explanation": entry["explanation"],
                                                        "scores": entry.get("scores", {})})
        return out
    except (AnatomistError, KeyError, TypeError, AttributeError) as e:
        problems.append(f"{path}: unreadable explanations ({e})")
        return {}


def write_feature_pages(dash_dir: Path, out: Path, title: str, root: str) -> list[str]:
    """Pages for the dashboard in `dash_dir`, written to `out`; returns the problems found (empty if none)."""
    problems: list[str] = []
    try:
        index = load_json(dash_dir / INDEX)
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            raise AnatomistError(f"{dash_dir / INDEX}: not an anatomist dashboard (format {FORMAT} expected)")
    except AnatomistError as e:
        return [str(e)]
    (out / "data").mkdir(parents=True, exist_ok=True)
    missing: dict[int, str] = {}
    for c in range(int(index["n_chunks"])):
        try:
            chunk = load_json(dash_dir / chunk_name(c))
            _js(out / "data" / f"chunk_{c:03d}.js", f"chunk_{c:03d}", chunk)
        except AnatomistError as e:
            missing[c] = str(e)
            problems.append(str(e))
    index["missing_chunks"] = {str(c): m for c, m in missing.items()}
    index["explanations"] = _explanations(dash_dir, problems)
    _js(out / "data" / "index.js", "index", index)
    meta = index.get("meta", {})
    head = (f"<h1>{esc(title)}</h1>" + problems_box(problems) + kv_table(
        {**meta, "latents": index["d_sae"], "rows (tokens or images)": index["n_rows"]}))
    search = ('<p><input id="search" type="search" placeholder="search top tokens or a latent number">'
              ' <span id="count"></span></p>')
    if (dash_dir / IMAGES).is_file():
        search = '<p><a href="images.html" id="image-view-link">per image: which latents fire where</a></p>' + search
    cols = [("i", "latent"), ("density", "density"), ("mean", "mean activation"), ("max", "max activation"),
            ("top", "top tokens" if index["kind"] == "tokens" else "—")]
    header = "".join(f'<th data-key="{k}">{esc(label)}</th>' for k, label in cols)
    table = f'<table class="grid" id="latents"><thead><tr>{header}</tr></thead><tbody id="latent-rows"></tbody></table>'
    atomic_write_text(out / "index.html", page(title, head + search + table, root, page_kind="features-index",
                                               scripts=["data/index.js"]))
    body = f'<p><a href="index.html">all latents of {esc(title)}</a></p><div id="latent"></div>'
    atomic_write_text(out / "latent.html", page(title, body, root, page_kind="latent", scripts=["data/index.js"]))
    if (dash_dir / IMAGES).is_file():
        _image_view_page(dash_dir, out, title, root, problems)
    return problems


def _image_view_page(dash_dir: Path, out: Path, title: str, root: str, problems: list[str]) -> None:
    """images.html: the vision dashboard's per-image view (which latents fire where on each image)."""
    try:
        _js(out / "data" / "images.js", "images", load_json(dash_dir / IMAGES))
    except AnatomistError as e:
        problems.append(str(e))
        return
    body = (f'<p><a href="index.html">all latents of {esc(title)}</a></p><h1>Images: which latents fire where</h1>'
            '<div id="image-views"></div>')
    atomic_write_text(out / "images.html", page(title, body, root, page_kind="images",
                                                scripts=["data/index.js", "data/images.js"]))
