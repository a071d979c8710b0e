"""`anatomist report RUN_DIR`: a static site (one folder, no network) for a run folder.

Pages: an overview (provenance, the run's numbers, links), one page per sub-folder that holds results
(decomposition runs get their CI heatmaps, component tables and cosine-to-ground-truth plots; polytope and
routing analyses their plots and numbers), and a dashboard per `dashboard.json` found. Every file the
report needs and cannot read is listed on the page that needed it, so a broken run folder gives a page
saying what is missing rather than a blank one.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path
from typing import Any

from anatomist.core.errors import AnatomistError
from anatomist.core.io import atomic_write_text, load_json
from anatomist.core.provenance import ACCESS, PROVENANCE, read_provenance
from anatomist.report.dashboard import INDEX
from anatomist.report.decomposition import decomposition_body
from anatomist.report.feature_pages import write_feature_pages
from anatomist.report.html import esc, figure, kv_table, page, problems_box, table

RESULT_FILES = ("metrics.json", "results.json", "eval.json")
SKIP_DIRS = {"checkpoints", "report", "__pycache__"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MARKER = ".anatomist-report"


def slug(rel: str) -> str:
    return rel.replace("/", "__").replace(" ", "_") or "run"


class Folder:
    """What one folder of the run holds: its result JSONs, plots, provenance, and what could not be read."""

    def __init__(self, run: Path, path: Path, files_out: Path) -> None:
        self.path, self.rel = path, str(path.relative_to(run)) if path != run else ""
        self.problems: list[str] = []
        self.json: dict[str, Any] = {}
        for name in RESULT_FILES:
            if (path / name).exists():
                try:
                    self.json[name] = load_json(path / name)
                except AnatomistError as e:
                    self.problems.append(str(e))
        self.provenance: dict[str, Any] | None = None
        if (path / PROVENANCE).exists():
            try:
                self.provenance = read_provenance(path)
            except AnatomistError as e:
                self.problems.append(str(e))
        self.plots: list[str] = []  # paths relative to the report folder
        for png in sorted(path.glob("*.png")):
            with png.open("rb") as f:
                if f.read(8) != PNG_MAGIC:
                    self.problems.append(f"{png}: not a PNG image (corrupted or truncated)")
                    continue
            dest = files_out / (self.rel or ".") / png.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, dest)
            self.plots.append(str(dest.relative_to(files_out.parent)))
        self._check_referenced(run)

    def _check_referenced(self, run: Path) -> None:
        """Plots named by the results ("plot"/"plots" keys) must exist, here or relative to the run."""
        def refs(obj: Any) -> list[str]:
            if isinstance(obj, dict):
                out = []
                for k, v in obj.items():
                    if k in ("plot", "plots"):
                        out += [v] if isinstance(v, str) else [x for x in v if isinstance(x, str)]
                    else:
                        out += refs(v)
                return out
            return []

        for name, doc in self.json.items():
            for ref in refs(doc):
                if not (self.path / ref).is_file() and not (run / ref).is_file():
                    self.problems.append(f"{self.path / ref}: missing (named in {self.path / name})")

    @property
    def has_content(self) -> bool:
        return bool(self.json or self.plots or self.problems or self.provenance)

    @property
    def is_decomposition(self) -> bool:
        m = self.json.get("metrics.json")
        return (self.path / "decomposition.safetensors").exists() or (isinstance(m, dict) and "layers" in m)


def _provenance_html(prov: dict[str, Any] | None, rel: str) -> str:
    if prov is None:
        return f"<p class='muted'>no {esc(PROVENANCE)} in {esc(rel or 'the run folder')}</p>"
    chips = "".join(f'<span class="chip{" used" if a in prov["access"] else ""}">{esc(a)}</span>' for a in ACCESS)
    models = table(["model", "weights sha256", "parameters"],
                   [[m.get("name"), str(m.get("weights_sha256", ""))[:16], m.get("parameters")]
                    for m in prov.get("models", [])]) if prov.get("models") else ""
    data = table(["data", "sha256", "tokens", "examples"],
                 [[d.get("name"), str(d.get("sha256") or "")[:16], d.get("n_tokens", ""), d.get("n_examples", "")]
                  for d in prov.get("data", [])]) if prov.get("data") else ""
    return (f'<div class="provenance"><p>access used: {chips}</p>{models}{data}'
            f"<p>seed: {esc(prov.get('seed'))} · created {esc(prov.get('created'))}</p>"
            f"<details><summary>packages</summary>{kv_table(prov.get('packages', {}))}</details>"
            f"<details><summary>full config</summary>{kv_table(prov.get('config', {}))}</details></div>")


def _results_html(folder: Folder) -> str:
    parts = []
    for name, doc in folder.json.items():
        if isinstance(doc, dict):
            parts.append(f"<h2>{esc(name)}</h2>" + kv_table(doc))
    return "".join(parts)


def _plots_html(folder: Folder, root: str) -> str:
    prefix = f"{root}/" if root else ""
    return "".join(figure(prefix + p, Path(p).name) for p in folder.plots)


def _section_page(folder: Folder, out: Path) -> str:
    name = slug(folder.rel)
    body = f"<h1>{esc(folder.rel)}</h1>" + problems_box(folder.problems)
    if folder.is_decomposition:
        body += decomposition_body(folder.path, folder.json.get("metrics.json"), folder.plots, "..")
    else:
        body += _plots_html(folder, "..") + _results_html(folder)
    body += "<h2>Provenance</h2>" + _provenance_html(folder.provenance, folder.rel)
    atomic_write_text(out / "sections" / f"{name}.html", page(folder.rel, body, ".."))
    return f"sections/{name}.html"


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the site for `run_dir` into `out` (default RUN_DIR/report); returns its index.html."""
    run = Path(run_dir)
    if not run.is_dir():
        raise AnatomistError(f"{run}: no such run folder")
    out = Path(out) if out is not None else run / "report"
    if out.exists():
        if not (out / MARKER).exists():
            raise AnatomistError(f"{out}: exists and is not an anatomist report; choose another --out")
        shutil.rmtree(out)
    (out / "sections").mkdir(parents=True)
    (out / MARKER).write_text("built by anatomist report\n")
    assets = resources.files("anatomist.report") / "assets"
    (out / "assets").mkdir()
    for name in ("app.js", "style.css"):
        (out / "assets" / name).write_text((assets / name).read_text(encoding="utf-8"), encoding="utf-8")

    files_out = out / "files"
    skip = {out.resolve()}
    dirs = [run] + sorted(p for p in run.rglob("*") if p.is_dir() and not _skipped(p, run, skip))
    folders = [Folder(run, d, files_out) for d in dirs if not (d / INDEX).exists()]
    top, subs = folders[0], [f for f in folders[1:] if f.has_content]
    if not (run / PROVENANCE).exists():
        top.problems.append(f"{run / PROVENANCE}: missing (the run did not record its provenance)")
    if not any((run / n).exists() for n in RESULT_FILES):
        top.problems.append(f"{run}: none of {', '.join(RESULT_FILES)} found (the run's numbers are missing)")

    links = [(f.rel, _section_page(f, out), len(f.problems)) for f in subs]
    dashboards = []
    for idx in sorted(run.rglob(INDEX)):
        if _skipped(idx.parent, run, skip):
            continue
        rel = str(idx.parent.relative_to(run))
        problems = write_feature_pages(idx.parent, out / "features" / slug(rel), rel, "../..")
        top.problems += problems
        dashboards.append((rel, f"features/{slug(rel)}/index.html"))

    body = f"<h1>Run {esc(run.resolve().name)}</h1><p class='muted'>{esc(run.resolve())}</p>"
    body += problems_box(top.problems + [p for f in subs for p in f.problems])
    if dashboards:
        body += "<h2>Feature dashboards</h2><ul>" + "".join(
            f'<li><a href="{esc(h)}">{esc(r)}</a></li>' for r, h in dashboards) + "</ul>"
    if links:
        body += "<h2>Parts of this run</h2><ul>" + "".join(
            f'<li><a href="{esc(h)}">{esc(r)}</a>{" (problems)" if n else ""}</li>' for r, h, n in links) + "</ul>"
    body += "<h2>Provenance</h2>" + _provenance_html(top.provenance, "")
    parts = [f for f in subs if f.provenance is not None]
    if parts:
        body += "<h3>Provenance of the parts</h3>" + table(
            ["part", "models", "data", "access"],
            [[f.rel, ", ".join(m.get("name", "") for m in f.provenance["models"]),  # type: ignore[index]
              ", ".join(d.get("name", "") for d in f.provenance["data"]),  # type: ignore[index]
              ", ".join(f.provenance["access"])] for f in parts])  # type: ignore[index]
    body += _overview_numbers(top) + _plots_html(top, "")
    atomic_write_text(out / "index.html", page(f"run {run.resolve().name}", body, ""))
    return out / "index.html"


def _skipped(p: Path, run: Path, skip: set[Path]) -> bool:
    rel = p.relative_to(run)
    return any(part in SKIP_DIRS for part in rel.parts) or any(
        p.resolve() == s or s in p.resolve().parents for s in skip)


def _overview_numbers(top: Folder) -> str:
    """The demo's metrics.json is {step: numbers}: one small table per step; anything else as one table."""
    m = top.json.get("metrics.json")
    if isinstance(m, dict) and m and all(isinstance(v, dict) for v in m.values()):
        return "<h2>Numbers</h2>" + "".join(
            f"<h3>{esc(step)}</h3>" + kv_table({k: v for k, v in nums.items() if k not in ("plot", "plots")})
            for step, nums in m.items())
    return _results_html(top)

