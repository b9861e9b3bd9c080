"""Shared fixtures of the end-to-end training tests: synthetic datasets prepared once per session via data_prep."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]



@pytest.fixture
def train(data_root: Path, tmp_path: Path, capsys):
    """Run `smx train RECIPE ...` in-process with data under data_root and runs under tmp_path; returns exit code."""
    from smx.cli import run

    def go(recipe: str | None, *args: str) -> int:
        code = run(["train", *([str(REPO / "recipes" / recipe)] if recipe else []), "--runs-root", str(tmp_path / "runs"),
                    "--set", f"data.root={data_root}", "--no-progress", *args])
        out = capsys.readouterr()
        if code != 0:
            print(out.err)
        return code

    return go
