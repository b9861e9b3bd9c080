"""Fixtures of the reliability tests: prepared synthetic data (shared with tests/train when both run), tree
snapshots, and helpers to run `smx` in-process or as a separate process (for kill -9 / SIGINT)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from rel_helpers import REPO  # noqa: E402


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """synthetic-mt and synthetic-lm prepared once per session (the same directory tests/train uses, so a run of
    the whole suite prepares them once: a second prepare of a finished dataset does nothing)."""
    import data_prep

    root = tmp_path_factory.getbasetemp() / "shared-data"
    root.mkdir(exist_ok=True)
    for name in ("synthetic-mt", "synthetic-lm"):
        data_prep.prepare(name, root=root, progress=False)
        assert data_prep.is_prepared(name, root)
    return root


@pytest.fixture
def tiny() -> Path:
    return REPO / "recipes" / "tiny.yaml"
