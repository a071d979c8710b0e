"""Files users can trust: one writer per folder, reports swapped in whole, the umask respected, strict JSON."""

from __future__ import annotations

import json
import math
import os
import signal
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from anatomist.cli.output import emit, print_result
from anatomist.core.errors import AnatomistError
from anatomist.core.io import atomic_write_text, dumps, save_json, save_tensors
from anatomist.core.lock import LOCK, folder_lock
from anatomist.core.metrics import Metrics, write_metrics
from anatomist.core.provenance import write_provenance
from anatomist.report.site import MARKER, build_report
from anatomist.runs.base import RunConfig, RunResult

SRC = str(Path(__file__).resolve().parents[1] / "src")

# a report build in another process that pauses inside the build (after writing part of the site) until the
# file argv[2] exists (a minute at most)
SLOW_BUILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import anatomist.report.site as site
    write_section = site._section_page
    def slow_section(folder, out):
        page = write_section(folder, out)
        print("building", flush=True)
        for _ in range(600):
            if Path(sys.argv[2]).exists():
                break
            time.sleep(0.1)
        return page
    site._section_page = slow_section
    site.build_report(sys.argv[1])
""")


def _run_folder(root: Path, fvu: float = 0.25) -> Path:
    """A run folder with numbers, provenance and one part (so the report has a section page to write)."""
    write_metrics(root, "toy", Metrics.from_nested({"fvu": fvu}), "a toy run")
    write_provenance(root, config={"kind": "toy"}, access=["weights"])
    write_metrics(root / "part", "toy", Metrics.from_nested({"l0": 3.0}), "a part")
    return root


def _python(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *args], env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


@pytest.fixture
def slow_builder(tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[str]]]:
    """Starts a build of a run folder that has a report already, paused mid-way until `tmp_path/go` exists."""
    procs: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        proc = _python("-c", SLOW_BUILD, str(tmp_path / "run"), str(tmp_path / "go"))
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "building\n", proc.communicate()
        return proc

    build_report(_run_folder(tmp_path / "run"))
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


# ---- 9: a lock per folder; reports built aside and swapped in


def test_folder_lock_refuses_a_second_process_naming_it(tmp_path: Path) -> None:
    holder = _python("-c", "import sys, time\nfrom anatomist.core.lock import folder_lock\n"
                     "with folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)",
                     str(tmp_path))
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(AnatomistError) as err, folder_lock(tmp_path, "training"):
            pass
        assert str(tmp_path) in str(err.value) and f"pid {holder.pid}" in str(err.value)
        assert "training" in str(err.value)
    finally:
        holder.send_signal(signal.SIGKILL)  # the kernel drops the lock with its holder, however it ends
        holder.wait()
    with folder_lock(tmp_path), folder_lock(tmp_path):  # free again, and its holder may take it twice
        assert (tmp_path / LOCK).read_text().strip() == str(os.getpid())


def test_concurrent_reports_end_with_one_complete_report(
        tmp_path: Path, slow_builder: Callable[[], subprocess.Popen[str]]) -> None:
    run = tmp_path / "run"
    write_metrics(run, "toy", Metrics.from_nested({"fvu": 0.5}), "the second version")
    first = slow_builder()
    second = subprocess.run([sys.executable, "-m", "anatomist", "report", str(run)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"pid {first.pid}" in lines[0]
    (tmp_path / "go").touch()
    assert first.wait(timeout=120) == 0, first.communicate()
    _assert_complete(run / "report")
    assert "the second version" in (run / "report" / "index.html").read_text()


def test_killed_report_build_leaves_the_old_report_and_the_next_build_works(
        tmp_path: Path, slow_builder: Callable[[], subprocess.Popen[str]]) -> None:
    run = tmp_path / "run"
    proc = slow_builder()
    before = (run / "report" / "index.html").read_text()
    staging = [p for p in run.iterdir() if p.name.startswith(".report.")]
    assert staging, "the build writes beside the report, not into it"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "report" / "index.html").read_text() == before
    _assert_complete(run / "report")
    write_metrics(run, "toy", Metrics.from_nested({"fvu": 0.5}), "a changed toy run")
    build_report(run)
    assert "a changed toy run" in (run / "report" / "index.html").read_text()
    _assert_complete(run / "report")
    assert [p.name for p in run.iterdir() if p.name.startswith(".report.")] == [], "leftovers are cleared"


def _assert_complete(site: Path) -> None:
    for rel in ("index.html", MARKER, "assets/app.js", "assets/style.css", "sections/part.html"):
        assert (site / rel).is_file(), rel


def test_report_into_a_foreign_folder_is_still_refused(tmp_path: Path) -> None:
    run = _run_folder(tmp_path / "run")
    (run / "report").mkdir()
    (run / "report" / "mine.txt").write_text("user data")
    with pytest.raises(AnatomistError, match="not an anatomist report"):
        build_report(run)
    assert (run / "report" / "mine.txt").read_text() == "user data"


# ---- 10: files get the umask's permissions, not mkstemp's 0600


def test_written_files_respect_the_umask(tmp_path: Path) -> None:
    before = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        save_json(tmp_path / "b.json", {"x": 1})
        save_tensors(tmp_path / "c.safetensors", {"w": torch.ones(2)})
        run = _run_folder(tmp_path / "run")
        build_report(run)
        os.umask(0o077)
        save_json(tmp_path / "private.json", {"x": 1})
    finally:
        os.umask(before)
    files = [tmp_path / n for n in ("a.txt", "b.json", "c.safetensors")] + [
        p for p in (run / "report").rglob("*") if p.is_file()] + [run / "metrics.json", run / "provenance.json"]
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: "0o644" for p in files}
    folders = [run / "report"] + [p for p in (run / "report").rglob("*") if p.is_dir()]
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in folders} == {"0o755"}
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600


# ---- 12: no bare NaN/Infinity in any JSON we write


def _strict(text: str) -> object:
    def refuse(name: str) -> None:
        raise ValueError(f"bare {name} in JSON")
    return json.loads(text, parse_constant=refuse)


def test_json_writers_map_non_finite_to_null(tmp_path: Path) -> None:
    obj = {"a": math.nan, "b": [1.0, math.inf, (-math.inf,)], "c": {"d": 2.5}}
    want = {"a": None, "b": [1.0, None, [None]], "c": {"d": 2.5}}
    save_json(tmp_path / "x.json", obj)
    assert _strict((tmp_path / "x.json").read_text()) == want
    assert _strict(dumps(obj)) == want


def test_cli_json_output_is_strict_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`emit` (plain results such as `regions density --json`) and a run's --json: null where not finite."""
    emit({"density": math.nan, "rows": [math.inf, 1.0]}, as_json=True)
    assert _strict(capsys.readouterr().out) == {"density": None, "rows": [None, 1.0]}
    result = RunResult("toy", tmp_path, RunConfig(kind="toy"), Metrics.from_nested({"fvu": math.nan}), "s", 1.0)
    print_result(result, as_json=True)
    doc = _strict(capsys.readouterr().out)
    assert isinstance(doc, dict) and doc["numbers"] == {"fvu": None} and doc["non_finite"] == ["fvu"]
