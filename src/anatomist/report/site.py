"""`anatomist report RUN_DIR`: a static site (one folder, no network) for a run folder.

Pages: an overview (a summary table with one row per part of the run, provenance, the run's numbers,
links), one page per sub-folder that holds results (decomposition runs get their CI heatmaps, component
tables and cosine-to-ground-truth plots; polytope and routing analyses their plots, numbers and tables),
and a dashboard per `dashboard.json` found. Numbers come from each folder's `metrics.json`
(`anatomist.core.metrics`: flat numbers, named tables, the kind and its one-line summary). Every file the
report needs and cannot read is listed on the page that needed it, so a broken run folder gives a page
saying what is missing rather than a blank one.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from anatomist.core.errors import AnatomistError
from anatomist.core.io import atomic_write_text, load_json, umask
from anatomist.core.lock import folder_lock
from anatomist.core.metrics import FORMAT, METRICS, Metrics, parse_metrics
from anatomist.core.provenance import ACCESS, PROVENANCE, read_provenance
from anatomist.report.dashboard import INDEX
from anatomist.report.decomposition import decomposition_body
from anatomist.report.feature_pages import write_feature_pages
from anatomist.report.html import esc, figure, fmt, kv_table, page, present, problems_box, table

SKIP_DIRS = {"checkpoints", "report", "__pycache__"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MARKER = ".anatomist-report"
PLOT_KEYS = ("plot", "plots")
# the measures every lens shares where it applies: the columns of the overview's summary table
SHARED = ("fvu", "l0", "ce_increase", "loss_recovered", "kl", "dead_fraction", "mmcs", "ml2r", "alive",
          "bits_per_input")
MAX_TABLE_ROWS = 50
NOT_FINITE = "— (not finite)"
STAGING, REPLACED = "building-", "replaced-"  # hidden folders beside the site: `.report.building-xxxx`


def slug(rel: str) -> str:
    return rel.replace("/", "__").replace(" ", "_") or "run"


class Folder:
    """What one folder of the run holds: its metrics, plots, provenance, and what could not be read."""

    def __init__(self, run: Path, path: Path, files_out: Path) -> None:
        self.path, self.rel = path, str(path.relative_to(run)) if path != run else ""
        self.problems: list[str] = []
        self.kind, self.summary = "", ""
        self.metrics: Metrics | None = None
        if (path / METRICS).exists():
            self._read_metrics()
        self.provenance: dict[str, Any] | None = None
        if (path / PROVENANCE).exists():
            try:
                self.provenance = read_provenance(path)
            except AnatomistError as e:
                self.problems.append(str(e))
        self.plots: list[str] = []  # paths relative to the report folder
        for png in sorted(path.glob("*.png")):
            self._copy_plot(png, files_out)
        self._check_referenced(run)

    def _read_metrics(self) -> None:
        """The run schema; a metrics.json of the older plain layout (no "format") is laid out the same way."""
        try:
            doc = load_json(self.path / METRICS)
            if isinstance(doc, dict) and doc.get("format") == FORMAT:  # read once: the file is parsed as is
                self.kind, self.summary, self.metrics = parse_metrics(doc, self.path / METRICS)
            elif isinstance(doc, dict):
                self.metrics = Metrics.from_nested(doc)
            else:
                self.problems.append(f"{self.path / METRICS}: not a JSON object")
        except AnatomistError as e:
            self.problems.append(str(e))

    def _copy_plot(self, png: Path, files_out: Path) -> None:
        with png.open("rb") as f:
            if f.read(8) != PNG_MAGIC:
                self.problems.append(f"{png}: not a PNG image (corrupted or truncated)")
                return
        dest = files_out / (self.rel or ".") / png.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, dest)
        self.plots.append(str(dest.relative_to(files_out.parent)))

    def _check_referenced(self, run: Path) -> None:
        """Plots named by the numbers ("plot"/"plots", also as "step.plot") must exist, here or relative to the run."""
        if self.metrics is None:
            return
        for name, value in self.metrics.numbers.items():
            if name.rsplit(".", 1)[-1] not in PLOT_KEYS:
                continue
            for ref in [value] if isinstance(value, str) else [x for x in value or [] if isinstance(x, str)]:
                if not (self.path / ref).is_file() and not (run / ref).is_file():
                    self.problems.append(f"{self.path / ref}: missing (named in {self.path / METRICS})")

    @property
    def has_content(self) -> bool:
        return bool(self.metrics is not None or self.plots or self.problems or self.provenance)

    @property
    def is_decomposition(self) -> bool:
        has_layers = self.metrics is not None and "layers" in self.metrics.tables
        return (self.path / "decomposition.safetensors").exists() or has_layers

    def shown(self, name: str, value: Any) -> Any:
        """A value as a page shows it: non-finite numbers (null in the file) say so; other nulls are left out."""
        non_finite = self.metrics.non_finite if self.metrics is not None else set()
        return NOT_FINITE if value is None and name in non_finite else value

    def shared(self, name: str) -> Any:
        """A shared measure of this part: its number, or for `alive` the sum over its `layers` table."""
        assert self.metrics is not None
        if name in self.metrics.numbers:
            return self.shown(name, self.metrics.numbers[name])
        layers = self.metrics.tables.get("layers", {})
        if name == "alive" and layers and all(isinstance(r.get("alive"), int) for r in layers.values()):
            return sum(r["alive"] for r in layers.values())
        return None


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
    when = [f"seed {prov['seed']}"] if prov.get("seed") is not None else []  # no seed: nothing to say
    when += [f"created {prov['created']}"] if prov.get("created") else []
    return (f'<div class="provenance"><p>access used: {chips}</p>{models}{data}'
            f"<p>{esc(' · '.join(when))}</p>"
            f"<details><summary>packages</summary>{kv_table(prov.get('packages', {}))}</details>"
            f"<details><summary>full config</summary>{kv_table(prov.get('config', {}))}</details></div>")


def _numbers_html(folder: Folder, names: list[str], title: str = "Numbers") -> str:
    assert folder.metrics is not None
    rows = present({n: folder.shown(n, folder.metrics.numbers[n]) for n in names})
    return f"<h2>{esc(title)}</h2>" + kv_table(rows) if rows else ""


def _tables_html(folder: Folder, skip: tuple[str, ...] = ()) -> str:
    assert folder.metrics is not None
    parts = []
    for name, rows in folder.metrics.tables.items():
        if name in skip:
            continue
        cols = list(dict.fromkeys(c for row in rows.values() for c in row))
        shown = list(rows.items())[:MAX_TABLE_ROWS]
        note = f"<p class='muted'>first {MAX_TABLE_ROWS} of {len(rows)} rows</p>" if len(rows) > MAX_TABLE_ROWS else ""
        body = [[r, *(_cell(folder, f"{name}.{r}.{c}", row.get(c)) for c in cols)] for r, row in shown]
        parts.append(f"<h2>{esc(name)}</h2>{note}" + table(["", *cols], body))
    return "".join(parts)


def _cell(folder: Folder, name: str, value: Any) -> Any:
    shown = folder.shown(name, value)
    return "" if shown is None else shown


def _results_html(folder: Folder) -> str:
    if folder.metrics is None:
        return ""
    names = [n for n in folder.metrics.numbers if n.rsplit(".", 1)[-1] not in PLOT_KEYS]
    return _numbers_html(folder, names) + _tables_html(folder)


def _plots_html(folder: Folder, root: str) -> str:
    prefix = f"{root}/" if root else ""
    return "".join(figure(prefix + p, Path(p).name) for p in folder.plots)


def _heading(folder: Folder, title: str) -> str:
    kind = f" <span class='muted'>({esc(folder.kind)})</span>" if folder.kind else ""
    summary = f"<p class='summary'>{esc(folder.summary)}</p>" if folder.summary else ""
    return f"<h1>{esc(title)}{kind}</h1>{summary}"


def _section_page(folder: Folder, out: Path) -> str:
    name = slug(folder.rel)
    body = _heading(folder, folder.rel) + problems_box(folder.problems)
    if folder.is_decomposition:
        body += decomposition_body(folder.path, folder.metrics, folder.plots, "..")
    else:
        body += _plots_html(folder, "..") + _results_html(folder)
    body += "<h2>Provenance</h2>" + _provenance_html(folder.provenance, folder.rel)
    atomic_write_text(out / "sections" / f"{name}.html", page(folder.rel, body, ".."))
    return f"sections/{name}.html"


def _in_run_order(top: Folder) -> Callable[[Folder], tuple[int, str]]:
    """Sort key of parts: the order the run ran them in (a demo's `parts`, a sweep's `runs` table), then by path."""
    tables = top.metrics.tables if top.metrics is not None else {}
    order = {name: i for i, name in enumerate(tables.get("parts") or tables.get("runs") or {})}
    return lambda f: (order.get(f.rel.split("/")[0], len(order)), f.rel)


def summary_table(folders: list[Folder], links: dict[str, str]) -> str:
    """One row per part with a metrics.json: part, kind, its one-line summary, and the shared measures it has."""
    rows = [f for f in folders if f.metrics is not None]
    if not rows:
        return ""
    cols = [c for c in SHARED if any(f.shared(c) is not None for f in rows)]
    head = "".join(f"<th>{esc(h)}</th>" for h in ("part", "kind", "summary", *cols))
    body = "".join(
        "<tr>" + _part_cell(f, links) + f"<td>{esc(f.kind)}</td><td>{esc(f.summary)}</td>"
        + "".join(f"<td>{esc(_shared_text(f.shared(c)))}</td>" for c in cols) + "</tr>" for f in rows)
    return ('<h2>Summary</h2><table class="grid" id="summary">'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def _part_cell(folder: Folder, links: dict[str, str]) -> str:
    if folder.rel in links:
        return f'<td><a href="{esc(links[folder.rel])}">{esc(folder.rel)}</a></td>'
    return f"<td>{esc(folder.rel or '(this run)')}</td>"


def _shared_text(value: Any) -> str:
    return "" if value is None else fmt(value)


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the site for `run_dir` into `out` (default RUN_DIR/report); returns its index.html.

    The site is built in a hidden folder beside `out` and swapped in whole, holding the run folder's lock: a
    build that is interrupted leaves the previous report as it was, and a second concurrent build is refused.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise AnatomistError(f"{run}: no such run folder")
    out = Path(out) if out is not None else run / "report"
    with folder_lock(run, "building a report of"):
        if out.exists() and not (out / MARKER).exists():
            raise AnatomistError(f"{out}: exists and is not an anatomist report; choose another --out")
        _remove_leftovers(out)
        staging = _staging_folder(out)
        try:
            _write_site(run, staging, skip={out.resolve(), staging.resolve()})
            _swap_in(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return out / "index.html"


def _write_site(run: Path, out: Path, skip: set[Path]) -> None:
    files_out = out / "files"
    dirs = [run] + sorted(p for p in run.rglob("*") if p.is_dir() and not _skipped(p, run, skip))
    folders = [Folder(run, d, files_out) for d in dirs]
    top = folders[0]
    subs = [f for f in folders[1:] if f.has_content and not (f.path / INDEX).exists()]
    boards = [f for f in folders[1:] if (f.path / INDEX).exists() and f.metrics is not None]  # `dashboard` runs
    if not (run / PROVENANCE).exists():
        top.problems.append(f"{run / PROVENANCE}: missing (the run did not record its provenance)")
    if not (run / METRICS).exists():
        top.problems.append(f"{run / METRICS}: missing (the run's numbers are missing)")

    links = {f.rel: _section_page(f, out) for f in subs}
    dashboards = []
    for idx in sorted(run.rglob(INDEX)):
        if _skipped(idx.parent, run, skip):
            continue
        rel = "" if idx.parent == run else str(idx.parent.relative_to(run))  # a `dashboard` run: the folder itself
        top.problems += write_feature_pages(idx.parent, out / "features" / slug(rel), rel or run.resolve().name,
                                            "../..")
        dashboards.append((rel, f"features/{slug(rel)}/index.html"))

    body = _heading(top, f"Run {run.resolve().name}") + f"<p class='muted'>{esc(run.resolve())}</p>"
    body += problems_box(top.problems + [p for f in folders[1:] for p in f.problems])
    board_links = {f.rel: f"features/{slug(f.rel)}/index.html" for f in boards}
    body += summary_table([top, *sorted(subs + boards, key=_in_run_order(top))], links | board_links)
    if dashboards:
        body += "<h2>Feature dashboards</h2><ul>" + "".join(
            f'<li><a href="{esc(h)}">{esc(r)}</a></li>' for r, h in dashboards) + "</ul>"
    if links:
        body += "<h2>Parts of this run</h2><ul>" + "".join(
            f'<li><a href="{esc(links[f.rel])}">{esc(f.rel)}</a>{" (problems)" if f.problems else ""}</li>'
            for f in subs) + "</ul>"
    body += "<h2>Provenance</h2>" + _provenance_html(top.provenance, "") + _parts_provenance(
        sorted(subs + boards, key=lambda f: f.rel))
    body += _overview_numbers(top) + _plots_html(top, "")
    # index.html last: a site folder with an index is a finished one
    atomic_write_text(out / "index.html", page(f"run {run.resolve().name}", body, ""))


def _staging_folder(out: Path) -> Path:
    """A new hidden folder beside `out` (same file system, so it can be renamed onto it) with the marker and assets."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.{STAGING}", dir=out.parent))
    staging.chmod(0o777 & ~umask())  # mkdtemp makes it 0700; the report is meant to be shared
    (staging / MARKER).write_text("built by anatomist report\n")
    (staging / "sections").mkdir()
    assets = resources.files("anatomist.report") / "assets"
    (staging / "assets").mkdir()
    for name in ("app.js", "style.css"):
        (staging / "assets" / name).write_text((assets / name).read_text(encoding="utf-8"), encoding="utf-8")
    return staging


def _remove_leftovers(out: Path) -> None:
    """Staging and replaced folders of builds that were killed (we hold the lock: no build of ours is running)."""
    if not out.parent.is_dir():
        return
    for p in out.parent.glob(f".{out.name}.*"):
        if p.is_dir() and (STAGING in p.name or REPLACED in p.name) and ((p / MARKER).exists() or
                                                                          not any(p.iterdir())):
            shutil.rmtree(p, ignore_errors=True)


def _swap_in(staging: Path, out: Path) -> None:
    """Put the finished site at `out`, replacing the previous one in one step where the system allows it."""
    if not out.exists():
        os.replace(staging, out)
        return
    if not _exchange(staging, out):  # two renames: a kill between them leaves the old site as a leftover
        replaced = out.parent / f".{out.name}.{REPLACED}{os.getpid()}"
        os.replace(out, replaced)
        os.replace(staging, out)
        staging = replaced
    shutil.rmtree(staging)  # now the previous site


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    rename = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # the C library's, where it has one
    if rename is None:
        return False
    at_cwd, exchange = -100, 2
    return rename(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), exchange) == 0


def _parts_provenance(subs: list[Folder]) -> str:
    parts = [(f.rel, f.provenance) for f in subs if f.provenance is not None]
    if not parts:
        return ""
    return "<h3>Provenance of the parts</h3>" + table(
        ["part", "models", "data", "access"],
        [[rel, ", ".join(m.get("name", "") for m in p["models"]), ", ".join(d.get("name", "") for d in p["data"]),
          ", ".join(p["access"])] for rel, p in parts])


def _skipped(p: Path, run: Path, skip: set[Path]) -> bool:
    rel = p.relative_to(run)
    hidden = any(part.startswith(".") for part in rel.parts)  # temporary folders (sites, checkpoints being written)
    return hidden or any(part in SKIP_DIRS for part in rel.parts) or any(
        p.resolve() == s or s in p.resolve().parents for s in skip)


def _overview_numbers(top: Folder) -> str:
    """Numbers named `step.name` (the demo's, one group per step) as one small table per step; else one table."""
    if top.metrics is None:
        return ""
    names = [n for n in top.metrics.numbers if n.rsplit(".", 1)[-1] not in PLOT_KEYS]
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(n.split(".", 1)[0] if "." in n else "", []).append(n)
    if "" in groups or len(groups) < 2:
        return _numbers_html(top, names) + _tables_html(top)
    html = "<h2>Numbers</h2>"
    for step, group in groups.items():
        rows = present({n.split(".", 1)[1]: top.shown(n, top.metrics.numbers[n]) for n in group})
        html += f"<h3>{esc(step)}</h3>" + kv_table(rows) if rows else ""
    return html + _tables_html(top)
