"""Small HTML writers: every text that came from data goes through `esc` (pages are built in Python)."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

from anatomist.core.io import dumps


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt(v: Any) -> str:
    """A value as a page shows it; null is an empty cell and nan/inf say what they are, never 'None' or 'nan'."""
    if v is None:
        return ""
    if isinstance(v, float) and not math.isfinite(v):
        return "— (not finite)"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and len(v) > 12:
        return json.dumps(v[:12])[:-1] + f", … ({len(v)} items)]"
    if isinstance(v, list | dict):
        text = json.dumps(v)
        return text if len(text) <= 200 else text[:200] + " …"
    return str(v)


def js_json(obj: Any) -> str:
    """JSON safe inside a <script> element or a .js file: no '<', '>', '&' or line separators left raw."""
    text = dumps(obj, separators=(",", ":"))
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                         ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text


def flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as (dotted key, value) rows."""
    rows: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            rows += flatten(v, key + ".")
        else:
            rows.append((key, v))
    return rows


def present(d: Mapping[str, Any]) -> dict[str, Any]:
    """`d` without its null values (at any depth): a page leaves out what a run did not set."""
    return {k: present(v) if isinstance(v, Mapping) else v for k, v in d.items() if v is not None}


def kv_table(d: Mapping[str, Any], cls: str = "kv") -> str:
    """Rows of (dotted key, value); null values are left out (no 'seed: None' on a page)."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in flatten(present(d)))
    return f'<table class="{cls}">{rows}</table>'


def table(header: Iterable[Any], rows: Iterable[Iterable[Any]], cls: str = "grid") -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def problems_box(problems: list[str]) -> str:
    if not problems:
        return ""
    items = "".join(f"<li>{esc(p)}</li>" for p in problems)
    return f'<div class="problems" id="problems"><h2>Missing or unreadable files</h2><ul>{items}</ul></div>'


def figure(src: str, caption: str) -> str:
    return f'<figure><img src="{esc(src)}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'


def _document(title: str, style: str, page_kind: str, home: str, body: str, tail: str = "") -> str:
    """The one page skeleton: head with `style` (a stylesheet link or an inline style), header with `home`."""
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title>{style}</head>"
        f'<body data-page="{esc(page_kind)}"><header>{home}<span>{esc(title)}</span></header>'
        f"<main>{body}</main>{tail}</body></html>"
    )


def page(title: str, body: str, root: str, *, page_kind: str = "static", scripts: Iterable[str] = (),
         data: Any = None) -> str:
    """A whole page; `root` is the relative path back to the report folder ('' or '../..'), for assets."""
    prefix = f"{root}/" if root else ""
    tags = "".join(f'<script src="{esc(s)}"></script>' for s in scripts)
    inline = f'<script type="application/json" id="page-data">{js_json(data)}</script>' if data is not None else ""
    return _document(title, f'<link rel="stylesheet" href="{prefix}assets/style.css">', page_kind,
                     f'<a href="{prefix}index.html">anatomist report</a>', body,
                     f'{inline}<script src="{prefix}assets/app.js"></script>{tags}')


def standalone_page(title: str, body: str) -> str:
    """A page written into a run folder with no report built around it: the report's style inlined (no asset
    files to go missing beside it) and no script (these pages are static)."""
    css = (resources.files("anatomist.report") / "assets" / "style.css").read_text(encoding="utf-8")
    return _document(title, f"<style>{css}</style>", "static", "<span>anatomist</span>", body)
