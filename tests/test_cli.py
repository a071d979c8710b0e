"""The command line: thin commands, --json output, one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from anatomist.cli import app

runner = CliRunner()


def test_sites_json_lists_cnn_modules() -> None:
    result = runner.invoke(app, ["sites", "mnist-cnn", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["module"]: r for r in json.loads(result.stdout)}
    assert rows["classifier.fc2"]["output_shape"] == [2, 10]
    assert rows["features.relu1"]["type"] == "ReLU"


def test_bad_input_is_one_line_and_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "anatomist", "sites", "no-such-model-anywhere"],
        capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "", "PYTHONPATH": "src"},
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "no-such-model-anywhere" in lines[0] and "smollm2" in lines[0]


def test_demo_rejects_unknown_part(tmp_path: Path) -> None:
    from anatomist.core import AnatomistError
    from anatomist.runs import parse_run_config

    with pytest.raises(AnatomistError, match=r"unknown demo part\(s\) \['nope'\]; known: \['tms'"):
        parse_run_config({"kind": "demo", "parts": ["nope"]})
