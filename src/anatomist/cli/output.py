"""How every command prints: one JSON object with --json, else the summary line, numbers and tables."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from anatomist.runs.base import RunResult

console = Console()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v[:8]) + (", …]" if len(v) > 8 else "]")
    return str(v)


def emit(obj: Any, as_json: bool) -> None:
    """Print a plain result: one JSON object with --json, else a table of its top-level values."""
    if as_json:
        print(json.dumps(obj, default=str))
        return
    table = Table(show_header=False, box=None)
    for k, v in obj.items():
        table.add_row(str(k), _fmt(v))
    console.print(table)


def print_result(result: RunResult, as_json: bool, max_rows: int = 12) -> None:
    """A run: --json gives {kind, out, summary, seconds, numbers, tables}; else words, numbers, small tables."""
    if as_json:
        print(json.dumps(result.to_json(), default=str))
        return
    if result.summary:
        console.print(f"[bold]{result.summary}[/bold]", highlight=False, soft_wrap=True)
    numbers = Table(show_header=False, box=None)
    for k, v in result.metrics.numbers.items():
        numbers.add_row(k, _fmt(v))
    console.print(numbers)
    for name, rows in result.metrics.tables.items():
        columns = list(dict.fromkeys(c for row in rows.values() for c in row))
        table = Table(name, *columns, title=name if len(rows) <= max_rows else f"{name} (first {max_rows})")
        for r, row in list(rows.items())[:max_rows]:
            table.add_row(r, *(_fmt(row.get(c, "")) for c in columns))
        console.print(table)
    console.print(f"run folder: {result.out}", highlight=False, soft_wrap=True)
