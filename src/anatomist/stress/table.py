"""The stress table: every lens against every stressor on the planted toy, a score and a verdict per cell.

For each stressor the base scenario is stressed; each lens is fitted on the stressed model's ordinary data and
scored against where the truth now lives. For stressors that happen after a lens was fitted (drift,
obfuscation) the lens is fitted on the original model and scored on the changed one (the fixed tool), and a
lens refitted on the changed model is the control. For a feature on a circle the cell also holds "pair": what
the lens's best 2-D reading (two of its elements together) recovers. Verdicts: "found" (score ≥ the lens's threshold),
"missed", or "n/a" (the lens reads nothing there, e.g. the bilinear eigen-reading of a model whose bilinear
block is empty).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from anatomist.core.errors import AnatomistError
from anatomist.stress.lenses import LENSES, METRIC, THRESHOLD, Budget, Reading
from anatomist.stress.stressors import STRESSORS, Stressed
from anatomist.stress.toy import Scenario, base_scenario

OnCell = Callable[[str, str, dict[str, Any]], None]


def check_names(lenses: Sequence[str], stressors: Sequence[str]) -> None:
    for what, names, known in (("lens", lenses, LENSES), ("stressor", stressors, STRESSORS)):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise AnatomistError(f"unknown {what} {unknown}; known: {', '.join(known)}")


def verdict(score: float | None, threshold: float) -> str:
    if score is None:
        return "n/a"
    return "found" if score >= threshold else "missed"


@dataclass
class _Fits:
    """Readings of the base model, fitted once and shared by every after-fit stressor."""

    base: Scenario
    budget: Budget
    seed: int
    done: dict[str, Reading]

    def base_reading(self, lens: str) -> Reading:
        if lens not in self.done:
            self.done[lens] = LENSES[lens](self.base, self.budget, self.seed)
        return self.done[lens]


def _cell(lens: str, stressed: Stressed, fits: _Fits) -> dict[str, Any]:
    fit = LENSES[lens]
    sc = stressed.scenario
    threshold = THRESHOLD[lens]
    if stressed.fitted_before:
        score = fits.base_reading(lens).score(sc)
        refit = fit(sc, fits.budget, fits.seed).score(sc)
        return {"score": score, "refit": refit, "threshold": threshold, "metric": METRIC[lens],
                "verdict": verdict(score, threshold), "refit_verdict": verdict(refit, threshold)}
    reading = fit(sc, fits.budget, fits.seed)
    score = reading.score(sc)
    cell: dict[str, Any] = {"score": score, "threshold": threshold, "metric": METRIC[lens],
                            "verdict": verdict(score, threshold)}
    if sc.truth.circle:  # a feature on a circle: what a 2-D reading (a pair of the lens's elements) holds
        pair = getattr(reading, "pair_score", None)
        pair_score = pair(sc) if pair is not None else None
        cell |= {"pair": pair_score, "pair_verdict": verdict(pair_score, threshold)}
    return cell


def stress_table(lenses: Sequence[str], stressors: Sequence[str], budget: Budget, *, n_features: int = 8,
                 seed: int = 0, train_steps: int = 300, on_cell: OnCell | None = None) -> dict[str, Any]:
    """{"cells": {stressor: {lens: cell}}, "stressors": {stressor: {kind, output_change, ...}}}."""
    check_names(lenses, stressors)
    base = base_scenario(n_features)
    fits = _Fits(base, budget, seed, {})
    cells: dict[str, dict[str, Any]] = {}
    info: dict[str, dict[str, Any]] = {}
    for name in stressors:
        stressed = STRESSORS[name](base, seed, train_steps)
        info[name] = {"kind": stressed.kind, "output_change": stressed.output_change, **stressed.extra}
        cells[name] = {}
        for lens in lenses:
            cells[name][lens] = _cell(lens, stressed, fits)
            if on_cell is not None:
                on_cell(name, lens, cells[name][lens])
    return {"cells": cells, "stressors": info}


def markdown(result: dict[str, Any]) -> str:
    """The table as Markdown: lenses as rows, stressors as columns, 'score verdict' per cell."""
    cells, info = result["cells"], result["stressors"]
    stressors = list(cells)
    lenses = list(next(iter(cells.values()))) if cells else []
    head = "| lens (metric, threshold) | " + " | ".join(stressors) + " |"
    lines = [head, "|" + "---|" * (len(stressors) + 1)]
    for lens in lenses:
        row = [f"{lens} ({METRIC[lens]} ≥ {THRESHOLD[lens]})"]
        for s in stressors:
            c = cells[s][lens]
            text = "n/a" if c["score"] is None else f"{c['score']:.2f} {c['verdict']}"
            for extra in ("refit", "pair"):
                if extra in c:
                    text += f" / {extra} " + ("n/a" if c[extra] is None else f"{c[extra]:.2f}")
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    change = ["output change (relative)"]
    for s in stressors:
        v = info[s]["output_change"]
        change.append("new model" if v is None else f"{v:.1e}")
    lines.append("| " + " | ".join(change) + " |")
    return "\n".join(lines)
