"""A check shared by the run-kind tests: a run folder holds the three files of the run contract."""

from __future__ import annotations

from pathlib import Path

import yaml

from anatomist.core.metrics import Metrics, read_metrics
from anatomist.core.provenance import read_provenance
from anatomist.runs import RunConfig, parse_run_config


def check_run_folder(out: Path, kind: str, config: RunConfig | None = None) -> Metrics:
    """config.yaml (re-runnable: it parses back to `config`), metrics.json of `kind`, provenance.json; the metrics."""
    again = parse_run_config(yaml.safe_load((out / "config.yaml").read_text()))
    assert again.kind == kind and (config is None or again == config)
    got_kind, summary, metrics = read_metrics(out)
    assert got_kind == kind and summary and (metrics.numbers or metrics.tables)
    record = read_provenance(out)
    assert record["config"]["kind"] == kind and record["access"]
    return metrics
