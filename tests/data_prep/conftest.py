"""Fixtures for the data_prep tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from dp_helpers import make_prep

from data_prep.steps.runner import Prep


@pytest.fixture
def prep(tmp_path: Path) -> Prep:
    return make_prep(tmp_path)
