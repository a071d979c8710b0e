"""Every ```python snippet of README.md runs as written: each in a fresh namespace, from a scratch folder that
has the repository's `experiments/` (the snippets name experiment files by their relative paths)."""

from __future__ import annotations

import ast
import builtins
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
# Snippets known not to run as the README has them now, by the heading they sit under. The "each lens" snippet
# uses names it never defines (acts, model, batches, x, cnn, images, moe_model, hidden, W, V); its correction is
# in issue 21's report, to be pasted into README.md. Remove the entry then: strict, so the test fails until it is.
BROKEN: dict[str, str] = {}  # heading -> why its snippet is known not to run (xfail, strict)


def snippets() -> list[tuple[str, int, str]]:
    """(heading above it, line number, code) of every ```python block of the README."""
    text = README.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        before = text[: m.start()]
        headings = re.findall(r"^#+ (.+)$", before, re.M)
        found.append((headings[-1] if headings else "", before.count("\n") + 1, m.group(1)))
    return found


# snippets that train for a minute or more (an SAE on SmolLM2, SPD on a toy): run with the slow tests
SLOW = {"Each lens in a few lines", "Runs: one way to start anything"}


def _param(heading: str, line: int, code: str, slow: bool = False) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=BROKEN[heading])] if heading in BROKEN else []
    marks += [pytest.mark.slow] if slow and heading in SLOW else []
    return pytest.param(code, id=f"line{line}-{heading.replace(' ', '_')}", marks=marks)


def undefined_names(code: str) -> set[str]:
    """Names a snippet reads but neither imports nor assigns (nor are builtins): it cannot run on its own."""
    tree = ast.parse(code)
    bound = set(dir(builtins))
    read = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return read - bound


def test_the_readme_has_snippets() -> None:
    assert len(snippets()) >= 3
    assert undefined_names("import os\nx = os.sep + y") == {"y"}  # the check below can fail


@pytest.mark.parametrize("code", [_param(*s) for s in snippets()])
def test_readme_snippet_is_self_contained(code: str) -> None:
    """Fast, so in every test run: each snippet defines what it uses (a reader copies one, not the page)."""
    assert undefined_names(code) == set()


@pytest.mark.parametrize("code", [_param(*s, slow=True) for s in snippets()])
def test_readme_snippet_runs(code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert undefined_names(code) == set()  # before running it: a snippet that cannot finish fails at once
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})  # noqa: S102  # our own README
