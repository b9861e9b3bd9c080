"""Fixtures shared by every test suite."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """synthetic-mt and synthetic-lm prepared once per session through data_prep (the code behind smx data prep)."""
    import data_prep

    root = tmp_path_factory.getbasetemp() / "shared-data"
    root.mkdir(exist_ok=True)
    for name in ("synthetic-mt", "synthetic-lm"):
        data_prep.prepare(name, root=root, progress=False)
        assert data_prep.is_prepared(name, root)
    return root
