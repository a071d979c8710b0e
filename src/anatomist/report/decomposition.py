"""The page body of an SPD / APD / L3D run folder: headline recovery numbers, the `layers` table, plots.

The numbers come from the folder's metrics.json (`anatomist.core.metrics.Metrics`): headline numbers by
name, and the `layers` table (one row per target layer; `init_layers` or `init.layers` at initialisation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anatomist.core.errors import AnatomistError
from anatomist.core.io import load_tensors
from anatomist.core.metrics import Metrics
from anatomist.report.html import esc, figure, table

CAPTIONS = {
    "ci_heatmap.png": "Causal importance (or attribution) of each subcomponent on one-hot inputs",
    "cosine_matrix.png": "Cosine of the ground-truth pieces with the subcomponents",
    "component_norms.png": "Norms of the subcomponents",
}
HEADLINE = ("mmcs", "init_mmcs", "init.mmcs", "min_cosine", "init_min_cosine", "init.min_cosine", "ml2r", "init_ml2r",
            "init.ml2r", "mmcs_rows", "ci_l0", "steps", "seconds", "toy", "method", "seed")
INIT_TABLES = ("init_layers", "init.layers")
MAX_COMPONENTS = 40


def _layer_table(layers: dict[str, dict[str, Any]]) -> str:
    cols = sorted({k for row in layers.values() for k in row})
    return table(["target", *cols], [[name, *(row.get(c, "") for c in cols)] for name, row in layers.items()])


def component_table(path: Path) -> tuple[str, list[str]]:
    """Per subcomponent, ‖U_c‖·‖V_c‖ (the norm of the rank-one matrix U_c V_cᵀ) in each target, largest first."""
    file = path / "decomposition.safetensors"
    if not file.exists():
        return "", []
    try:
        tensors = load_tensors(file)
    except AnatomistError as e:
        return "", [str(e)]
    targets = sorted(k[2:] for k in tensors if k.startswith("U."))
    if not targets:
        return "", []
    norms = {t: (tensors[f"U.{t}"].norm(dim=1) * tensors[f"V.{t}"].norm(dim=0)).tolist() for t in targets}
    n = len(next(iter(norms.values())))
    order = sorted(range(n), key=lambda c: -max(norms[t][c] for t in targets))
    rows = [[c, *(norms[t][c] for t in targets)] for c in order[:MAX_COMPONENTS]]
    note = f"<p class='muted'>{min(n, MAX_COMPONENTS)} of {n} subcomponents, by their largest norm</p>"
    return "<h2>Subcomponents</h2>" + note + table(["subcomponent", *(f"‖U V‖ {t}" for t in targets)], rows), []


def decomposition_body(path: Path, metrics: Metrics | None, plots: list[str], root: str) -> str:
    parts = []
    if metrics is not None:
        head = [[k, metrics.numbers[k]] for k in HEADLINE if metrics.numbers.get(k) is not None]
        parts.append("<h2>Recovery of the ground truth</h2>" + table(["measure", "value"], head))
        if "layers" in metrics.tables:
            parts.append("<h2>Per target layer (trained)</h2>" + _layer_table(metrics.tables["layers"]))
        for name in INIT_TABLES:
            if name in metrics.tables:
                parts.append("<h2>Per target layer (at initialisation)</h2>" + _layer_table(metrics.tables[name]))
    comp, problems = component_table(path)
    if problems:
        items = "".join(f"<li>{esc(p)}</li>" for p in problems)
        parts.append(f'<div class="problems"><h2>Unreadable files</h2><ul>{items}</ul></div>')
    parts.append(comp)
    prefix = f"{root}/" if root else ""
    figures = [figure(prefix + p, CAPTIONS.get(Path(p).name, Path(p).name)) for p in plots]
    parts.append("<h2>Plots</h2>" + "".join(figures))
    return "".join(parts)
