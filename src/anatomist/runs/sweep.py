"""Run kind `sweep`: several runs of one kind that share a base config and differ in a few keys.

Each run goes into `out/<name>` as an ordinary run of its kind (so a stopped sweep continues where it
stopped: a training run whose folder holds the same config resumes), and the sweep's metrics.json holds
one table, a row per run with the chosen numbers.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator
from rich.console import Console

from anatomist.runs.base import (
    Context,
    Outcome,
    RunConfig,
    apply_overrides,
    parse_run_config,
    register,
    run_or_continue,
)


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` laid over it; nested sections merge key by key."""
    out = dict(base)
    for key, value in overrides.items():
        both_sections = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = deep_merge(out[key], value) if both_sections else value
    return out


class SweepConfig(RunConfig):
    """Several runs of one kind sharing a base config, each overriding a few keys; one table of their numbers."""

    kind: Literal["sweep"] = "sweep"
    base: dict[str, Any] = Field(description="the config every run starts from, with its `kind`")
    runs: dict[str, dict[str, Any]] = Field(description="run name -> the keys it changes (sections merge)")
    columns: list[str] = Field(default_factory=list, description="numbers shown per run (empty: those all runs have)")
    only: list[str] | None = Field(None, description="run only these names, in the sweep's order (null: all)")
    overrides: list[str] = Field(default_factory=list, description="key=value settings laid over every run after "
                                                                   "its own keys (e.g. steps=10 for a quick try)")

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        unknown = [n for n in self.only or [] if n not in self.runs]
        if unknown:
            raise ValueError(f"only: unknown run name(s) {unknown}; runs are {list(self.runs)}")
        self.run_configs()  # every run's config must validate before anything runs
        return self

    def run_configs(self) -> dict[str, RunConfig]:
        names = [n for n in self.runs if self.only is None or n in self.only]
        return {n: parse_run_config(apply_overrides(deep_merge(self.base, self.runs[n]), self.overrides),
                                    source=f"sweep run '{n}'") for n in names}


def _row(numbers: dict[str, Any], columns: list[str]) -> dict[str, Any]:
    return {c: numbers.get(c) for c in columns}


# data-parallel when its runs are (each part is refused under torchrun unless its kind is): it writes only through them
@register(SweepConfig, composite=True, data_parallel=True)
def sweep(cfg: SweepConfig, ctx: Context) -> Outcome:
    console = Console(stderr=True, soft_wrap=True, highlight=False)
    results = {}
    for name, config in cfg.run_configs().items():
        results[name] = run_or_continue(config, ctx.out / name)
        console.print(f"[bold]{name}[/bold] ({results[name].seconds:.0f} s): {results[name].summary}")
    numbers = {n: r.metrics.numbers for n, r in results.items()}
    columns = cfg.columns or [k for k in next(iter(numbers.values()), {}) if all(k in v for v in numbers.values())]
    table = {n: {"kind": r.kind, **_row(numbers[n], columns)} for n, r in results.items()}
    summary = f"sweep of {len(results)} {cfg.base.get('kind')} runs: " + "; ".join(
        f"{n}: {r.summary}" for n, r in results.items())
    return Outcome({"runs": table, "n_runs": len(results)}, summary)
