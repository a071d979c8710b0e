"""How every command prints: one JSON object with --json, else the summary line, numbers and tables."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from anatomist.core.io import dumps
from anatomist.runs.base import RunResult

# off a terminal (a log, a pipe) rich would wrap tables at 80 columns; a log line may be long
console = Console() if sys.stdout.isatty() else Console(width=160)
LONG_TEXT = 40  # table columns of longer strings (a part's summary) are left out: they are printed as lines


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v[:8]) + (", …]" if len(v) > 8 else "]")
    return str(v)


def emit(obj: Any, as_json: bool) -> None:
    """Print a plain result: one JSON object with --json, else a table of its top-level values."""
    if as_json:
        print(dumps(obj, default=str))
        return
    table = Table(show_header=False, box=None)
    for k, v in obj.items():
        table.add_row(str(k), _fmt(v))
    console.print(table)


def print_result(result: RunResult, as_json: bool, max_rows: int = 12) -> None:
    """A run: --json gives {kind, out, summary, seconds, numbers, tables}; else words, numbers, small tables."""
    if as_json:
        print(dumps(result.to_json(), default=str))
        return
    if result.summary:
        console.print(result.summary, style="bold", markup=False, highlight=False, soft_wrap=True)
    numbers = Table(show_header=False, box=None)
    for k, v in result.metrics.numbers.items():
        numbers.add_row(escape(k), escape(_fmt(v)))
    console.print(numbers)
    for name, rows in result.metrics.tables.items():
        columns = [c for c in dict.fromkeys(c for row in rows.values() for c in row)
                   if not any(isinstance(row.get(c), str) and len(row[c]) > LONG_TEXT for row in rows.values())]
        table = Table(name, *columns, title=name if len(rows) <= max_rows else f"{name} (first {max_rows})")
        for r, row in list(rows.items())[:max_rows]:
            table.add_row(escape(r), *(escape(_fmt(row.get(c, ""))) for c in columns))
        console.print(table)
    console.print(f"run folder: {result.out}", highlight=False, soft_wrap=True)
