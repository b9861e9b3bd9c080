"""smx.run.progress: the training progress display (rendered to a string console)."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from smx.recipe import recipes
from smx.run.progress import TrainProgress

REPO = Path(__file__).resolve().parents[2]


def test_progress_shows_updates_loss_lr_rate_and_validations():
    out = io.StringIO()
    recipe = recipes.load(REPO / "recipes/tiny.yaml")
    with TrainProgress(recipe, console=Console(file=out, width=120)) as bar:
        bar.update({"step": 10, "split": "train", "loss": 7.5, "lr": 1e-3, "wps": 2500.0})
        bar.update({"step": 16, "split": "train", "epoch_end": True, "loss": 9.0})  # epoch averages: ignored
        bar.update({"step": 30, "split": "valid", "loss": 5.25, "ppl": 38.05})
        bar.update({"step": 40, "split": "train", "loss": 5.0, "lr": 9e-4, "wps": 2600.0})
    text = out.getvalue()
    assert "valid @ update 30: loss 5.250 ppl 38.05" in text
    assert "40/60" in text and "loss 5.000" in text and "lr 0.0009" in text and "2.6k tok/s" in text


def test_disabled_progress_prints_nothing():
    out = io.StringIO()
    with TrainProgress(recipes.load(REPO / "recipes/tiny.yaml"), console=Console(file=out), enabled=False) as bar:
        bar.update({"step": 30, "split": "valid", "loss": 5.25})
    assert out.getvalue() == ""
