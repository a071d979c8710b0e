"""Progress for people and for logs.

- `progress(items)`: a rich progress bar on stderr when it is a terminal, quiet in logs, CI and pipes.
- `TrainingLog`: what a training loop reports every `log_every` steps, terminal or not: one line on stderr
  (step, losses, steps/s, ETA) and the same record appended to the run folder's `metrics.jsonl`, so a run of
  hours can be followed with `tail -f` and judged after a kill.

`ANATOMIST_PROGRESS=0` silences both the bar and the stderr lines (metrics.jsonl is still written);
`ANATOMIST_PROGRESS=1` draws the bar even when stderr is not a terminal.

Under torch.distributed only rank 0 draws, prints and appends to metrics.jsonl (the ranks train one model in step,
so one account of it is the account): every training loop that reports through here is rank-safe as it is.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from anatomist.core.distributed import is_main
from anatomist.core.io import dumps

T = TypeVar("T")
LOSS_LOG = "metrics.jsonl"
_OFF = ("0", "false", "no", "")


def progress_enabled() -> bool:
    """Whether to draw progress bars: ANATOMIST_PROGRESS when set, else whether stderr is a terminal."""
    forced = os.environ.get("ANATOMIST_PROGRESS")
    if not is_main():
        return False
    if forced is not None:
        return forced not in _OFF
    return sys.stderr.isatty()


_muted = 0  # > 0 inside `lines_to_log_only()`


def progress_lines_enabled() -> bool:
    """Whether training loops print their progress lines on stderr: always, unless ANATOMIST_PROGRESS turns it off
    (or a caller that reports in its own words, like the demo, sends them to the run's metrics.jsonl only)."""
    return _muted == 0 and is_main() and os.environ.get("ANATOMIST_PROGRESS", "1") not in _OFF


@contextmanager
def lines_to_log_only() -> Iterator[None]:
    """Within the block, training loops write their step records to metrics.jsonl but print no lines."""
    global _muted
    _muted += 1
    try:
        yield
    finally:
        _muted -= 1


def progress(items: Iterable[T], total: int | None = None, desc: str = "") -> Iterator[T]:
    """Iterate over `items`, drawing a rich progress bar on stderr when it is a terminal."""
    if not progress_enabled():
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(desc, total=total)
        for item in items:
            yield item
            bar.advance(task)


def duration(seconds: float) -> str:
    """'42s', '3m05s', '2h07m' for a progress line."""
    if not math.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class TrainingLog:
    """Progress of one training loop, from step `start` (0, or the resumed checkpoint's) to `total`.

    `step(n, values)` reports step n: a line on stderr and a record in `run_dir/metrics.jsonl` (when a run
    folder is given) with the values, `steps_per_s` over this process's steps so far and `eta_s`.
    `event(record)` appends other records (a resume, an evaluation) to the file only.
    """

    def __init__(self, run_dir: str | Path | None, desc: str, total: int, start: int = 0):
        self.path = Path(run_dir) / LOSS_LOG if run_dir is not None else None
        self.desc, self.total, self.start = desc, total, start
        self.t0 = time.perf_counter()

    def event(self, record: Mapping[str, Any]) -> None:
        if self.path is None or not is_main():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(dumps(dict(record)) + "\n")  # nan as null: strict JSON readers take every line
            f.flush()

    def step(self, step: int, values: Mapping[str, Any]) -> dict[str, Any]:
        """Report step `step`; returns the record written (values with step, steps_per_s, eta_s)."""
        elapsed = time.perf_counter() - self.t0
        rate = (step - self.start) / elapsed if elapsed > 0 else math.inf
        eta = (self.total - step) / rate if rate > 0 else math.inf
        record = {**values, "step": step, "steps_per_s": _rounded(rate, 3), "eta_s": _rounded(eta, 1)}
        self.event(record)
        if progress_lines_enabled():
            print(self.line(step, values, rate, eta), file=sys.stderr, flush=True)
        return record

    def line(self, step: int, values: Mapping[str, Any], rate: float, eta: float) -> str:
        """'spd step 300/600  loss 0.0123  faithfulness 1.2e-05  41.2 steps/s  ETA 7s'."""
        shown = "  ".join(f"{k} {v:.4g}" for k, v in values.items()
                          if isinstance(v, float | int) and not isinstance(v, bool) and k != "step")
        return f"{self.desc} step {step}/{self.total}  {shown}  {rate:.3g} steps/s  ETA {duration(eta)}"


def _rounded(x: float, digits: int) -> float | None:
    """JSON has no Infinity: an unknown rate or ETA (no step timed yet) is written as null."""
    return round(x, digits) if math.isfinite(x) else None
