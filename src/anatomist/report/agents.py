"""Report pages of the goal-misgeneralization runs: one self-contained `report.html` in the run folder.

- an agent (`agent-train`, or the agent an `agent-lens` run studied): its outcome rates on test and
  training-distribution levels with Wilson intervals, the scripted seekers beside it, the learning curve and the
  trajectory PNGs, and the lens results (probes, SAE latents, region codes, steering) when there are some;
- a grid (`goal-misgen`): misgeneralization against rand_frac (table and PNG) and a link to each cell's page.

Images are linked by paths relative to the page, so a page can show an agent that lives in another folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from anatomist.agents.measure import MEANS
from anatomist.core.io import atomic_write_text
from anatomist.report.html import esc, figure, flatten, standalone_page, table

PAGE = "report.html"
OUTCOMES = ("capable", "goal", "proxy", "misgeneralized", "misgeneralized_given_capable")
AGENT_FIGURES = (("learning_curve.png", "learning curve (mean return and goal/proxy rates per update)"),
                 ("trajectories.png", "greedy trajectories on held-out test levels"))


def _flat(d: Mapping[str, Any]) -> dict[str, Any]:
    return dict(flatten(d))


def rates_table(metrics: Mapping[str, Any]) -> str:
    """Rows: (scope, outcome) with rate and its interval, for the test and training-distribution levels."""
    flat = _flat(metrics)
    rows = [[scope, outcome, flat.get(f"{scope}.{outcome}.rate"), flat.get(f"{scope}.{outcome}.low"),
             flat.get(f"{scope}.{outcome}.high")]
            for scope in ("test", "train_distribution") for outcome in OUTCOMES if f"{scope}.{outcome}.rate" in flat]
    scripted = [[f"scripted {who}", outcome, flat[f"scripted.{who}.{outcome}"], None, None]
                for who in ("goal", "proxy", "random") for outcome in (*OUTCOMES, *MEANS)
                if f"scripted.{who}.{outcome}" in flat]
    means = [[scope, mean.replace("_", " "), flat[f"{scope}.{mean}"], None, None]
             for scope in ("test", "train_distribution") for mean in MEANS if f"{scope}.{mean}" in flat]
    return table(["levels", "outcome", "rate", "95% low", "95% high"], rows + scripted + means)


def lens_tables(lenses: Mapping[str, Any]) -> str:
    """Probes, SAE latents and region clusters as tables of (what, goal / proxy numbers); steering as rates."""
    parts = []
    if "probes" in lenses:
        families = tuple(f for f in ("goal_direction", "proxy_direction", "goal_quadrant") if f in lenses["probes"])
        parts.append("<h2>Linear probes</h2>" + _by_family(lenses["probes"], families))
    if "sae" in lenses:
        sae = lenses["sae"]
        rows = [[basis, family, v["auc"], v["shuffled_labels"]] for basis in ("sae", "neurons", "untrained_sae")
                for family, v in sae[basis].items()]
        parts.append("<h2>SAE latents (best latent's held-out AUC)</h2>"
                     + table(["basis", "label", "AUC", "shuffled labels"], rows))
    if "polytope" in lenses:
        poly = lenses["polytope"]
        rows = [[policy, family, v["purity"], v["chance_purity"], v["nmi"]] for policy in ("trained", "untrained")
                for family, v in poly[policy].items() if isinstance(v, Mapping)]
        parts.append(f"<h2>Polytope lens (k={esc(poly['k'])} region clusters)</h2>"
                     + table(["policy", "label", "purity", "chance purity", "NMI"], rows))
    if "steering" in lenses:
        rows = [[key, v["goal"]["rate"], v["proxy"]["rate"]] for key, v in lenses["steering"].items()
                if isinstance(v, Mapping)]
        parts.append("<h2>Goal-vector steering</h2>" + table(["coefficient", "goal", "proxy"], rows))
    return "".join(parts)


def _by_family(report: Mapping[str, Any], families: tuple[str, ...]) -> str:
    cols = [c for c in report[families[0]]]
    return table(["label", *cols], [[f, *(report[f][c] for c in cols)] for f in families])


def write_agent_page(out: Path, agent_folder: Path, metrics: Mapping[str, Any], title: str,
                     lenses: Mapping[str, Any] | None = None) -> Path:
    """`out`/report.html for the agent in `agent_folder` (its images linked relative to `out`)."""
    rel = os.path.relpath(agent_folder, out)
    figures = "".join(figure(_join(rel, name), caption) for name, caption in AGENT_FIGURES
                      if (agent_folder / name).is_file())
    body = (f"<h1>{esc(title)}</h1><h2>Outcomes</h2>{rates_table(metrics)}{figures}"
            + (lens_tables(lenses) if lenses else ""))
    path = out / PAGE
    atomic_write_text(path, standalone_page(title, body))
    return path


def _join(rel: str, name: str) -> str:
    return name if rel == "." else f"{Path(rel).as_posix()}/{name}"


def write_grid_page(out: Path, curve: Mapping[str, Mapping[str, Any]], cells: list[str], title: str) -> Path:
    """`out`/report.html for a goal-misgen grid: the curve's table and PNG, and links to the cells' pages."""
    cols = [c for c in next(iter(curve.values())) if c != "rand_frac"]
    rows = [[v["rand_frac"], *(v.get(c) for c in cols)] for v in curve.values()]
    links = "".join(f'<li><a href="{esc(c)}/{PAGE}">{esc(c)}</a></li>' for c in cells
                    if (out / c / PAGE).is_file())
    body = (f"<h1>{esc(title)}</h1>" + figure("misgeneralization.png", "misgeneralization against rand_frac")
            + table(["rand_frac", *cols], rows) + f"<h2>Agents</h2><ul>{links}</ul>")
    path = out / PAGE
    atomic_write_text(path, standalone_page(title, body))
    return path

