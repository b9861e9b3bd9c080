"""Fixtures of the reliability tests: prepared synthetic data (shared with tests/run when both run), tree
snapshots, and helpers to run `smx` in-process or as a separate process (for kill -9 / SIGINT)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from rel_helpers import REPO  # noqa: E402



@pytest.fixture
def tiny() -> Path:
    return REPO / "recipes" / "tiny.yaml"
