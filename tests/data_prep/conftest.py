"""Fixtures for the data_prep tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from dp_helpers import make_prep

from data_prep.runner import Prep


@pytest.fixture
def prep(tmp_path: Path) -> Prep:
    return make_prep(tmp_path)


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SMX_DATA_CACHE", raising=False)
