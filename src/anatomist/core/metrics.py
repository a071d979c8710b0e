"""metrics.json: one schema for every run — flat numbers plus named tables.

    {"format": "anatomist-metrics/1", "kind": "spd-toy",
     "numbers": {"mmcs": 0.9999, "steps_per_s": 41.2, "init.mmcs": 0.77, "site": "model.layers.6", ...},
     "tables": {"layers": {"linear1": {"alive": 5, "mmcs": 1.0}, ...}}}

`numbers` maps dotted names to a scalar (number, string, bool or null) or a short list of scalars;
`tables` maps a table name to rows, each row a name and a mapping of column to scalar. A kind
returns its results as a nested dict; `Metrics.from_nested` lays it out in this shape (nested
mappings of scalars become dotted names, mappings of mappings become tables). Non-finite floats are
written as null, with their names listed under "non_finite", so strict JSON parsers can read every file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anatomist.core.errors import AnatomistError
from anatomist.core.io import load_json, save_json

METRICS = "metrics.json"
FORMAT = "anatomist-metrics/1"
Scalar = int | float | str | bool | None


def _is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, int | float | str | bool)


def _is_row(v: Any) -> bool:
    return isinstance(v, Mapping) and all(_is_scalar(x) or _is_vector(x) for x in v.values())


def _is_vector(v: Any) -> bool:
    return isinstance(v, list | tuple) and all(_is_scalar(x) for x in v)


@dataclass
class Metrics:
    """A run's numbers (flat, dotted names) and tables (name -> row name -> column -> value)."""

    numbers: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # read from a file: the names whose null stands for a nan/inf (writing recomputes them from the values)
    non_finite: set[str] = field(default_factory=set)

    @classmethod
    def from_nested(cls, nested: Mapping[str, Any]) -> Metrics:
        m = cls()
        m._add(nested, "")
        return m

    def _add(self, nested: Mapping[str, Any], prefix: str) -> None:
        for key, value in nested.items():
            name = f"{prefix}{key}"
            if _is_scalar(value) or _is_vector(value):
                self.numbers[name] = list(value) if isinstance(value, tuple) else value
            elif isinstance(value, Mapping) and value and all(_is_row(v) for v in value.values()):
                self.tables[name] = {str(r): dict(row) for r, row in value.items()}
            elif isinstance(value, list | tuple) and value and all(_is_row(v) for v in value):
                self.tables[name] = {str(i): dict(row) for i, row in enumerate(value)}
            elif isinstance(value, Mapping):
                self._add(value, f"{name}.")
            else:
                raise AnatomistError(f"metrics: '{name}' is a {type(value).__name__}, not a number, table or mapping")

    def __getitem__(self, name: str) -> Any:
        return self.numbers[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.numbers.get(name, default)

    def to_json(self, kind: str, summary: str = "") -> dict[str, Any]:
        """The file's content; non-finite floats become null and are named under "non_finite"."""
        bad: list[str] = []
        numbers = {k: _finite(v, k, bad) for k, v in self.numbers.items()}
        tables = {t: {r: {c: _finite(v, f"{t}.{r}.{c}", bad) for c, v in row.items()} for r, row in rows.items()}
                  for t, rows in self.tables.items()}
        doc: dict[str, Any] = {"format": FORMAT, "kind": kind, "summary": summary, "numbers": numbers, "tables": tables}
        if bad:
            doc["non_finite"] = bad
        return doc


def _finite(v: Any, name: str, bad: list[str]) -> Any:
    if isinstance(v, list):
        return [_finite(x, name, bad) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        bad.append(name)
        return None
    return v


def write_metrics(run_dir: str | Path, kind: str, metrics: Metrics, summary: str = "") -> Path:
    path = Path(run_dir) / METRICS
    save_json(path, metrics.to_json(kind, summary))
    return path


def read_metrics(run_dir: str | Path) -> tuple[str, str, Metrics]:
    """(kind, summary, metrics) of a run folder; an error naming the file when it is missing or of another format."""
    path = Path(run_dir) / METRICS
    return parse_metrics(load_json(path), path)


def parse_metrics(doc: Any, path: Path) -> tuple[str, str, Metrics]:
    """(kind, summary, metrics) of the content of metrics.json file `path` (named in the error if not one)."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise AnatomistError(f"{path}: not an anatomist metrics file (format {FORMAT} expected)")
    metrics = Metrics(dict(doc.get("numbers", {})), dict(doc.get("tables", {})), set(doc.get("non_finite", [])))
    return str(doc["kind"]), str(doc.get("summary", "")), metrics
