"""`smx train` on a recipe whose dataset is not prepared: it prepares it (data_prep) and trains (the real engine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smx.cli import run

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_train_prepares_missing_dataset(tmp_path: Path, capsys):
    import data_prep

    root = tmp_path / "fresh"
    code = run(["train", str(REPO / "recipes/tiny.yaml"), "--run-dir", str(tmp_path / "run"), "--set",
                f"data.root={root}", "--set", "train.max_update=5", "--set", "train.log_interval=1", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert data_prep.is_prepared("synthetic-mt", root)
    assert "is not prepared under" in capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoints" / "checkpoint_last.pt").is_file()
