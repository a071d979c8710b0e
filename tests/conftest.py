"""Fixtures shared by the test files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from anatomist.nets.assets import LoadedModel, load_model

# captured at import, before any test points ANATOMIST_CACHE elsewhere
_USER_CACHE = os.environ.get("ANATOMIST_CACHE")


@pytest.fixture
def tmp_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ANATOMIST_CACHE for one test, so tests never write into the user's cache."""
    root = tmp_path / "anatomist-cache"
    monkeypatch.setenv("ANATOMIST_CACHE", str(root))
    return root


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """SmolLM2-135M-Instruct on CPU, loaded once per test session.

    Deliberately from the user's real cache ($ANATOMIST_CACHE or ~/.cache/anatomist), not a temp
    one: de-quantising the GGUF costs 10-30 s, and that cache exists so it is paid once per
    machine. The first run on a fresh machine builds it (~540 MB); later runs load it in seconds.
    """
    with pytest.MonkeyPatch.context() as mp:
        if _USER_CACHE is None:
            mp.delenv("ANATOMIST_CACHE", raising=False)
        else:
            mp.setenv("ANATOMIST_CACHE", _USER_CACHE)
        return load_model("smollm2")
