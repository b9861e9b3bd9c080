"""Fixtures for tests/study (helpers live in compare_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from compare_helpers import load_values, write_run  # noqa: F401


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """Baseline topk (2 seeds) and sparsemixer (2 seeds); steps 10, 20, 30.

    topk mean curve: [4, 2.5, 2] -> default target 2.0; updates to target: seed 1 -> 20, seed 2 -> 30 (mean 25).
    sparsemixer: seed 1 -> 20, seed 2 -> 10 (mean 15); speed-up 25 / 15 = 5/3.
    """
    root = tmp_path / "study"
    steps = [10, 20, 30]
    load = load_values(["enc0", "dec0"], [[0.5, 0.25, 0.25, 0.0], [0.25, 0.25, 0.25, 0.25]])
    write_run(root, "topk-s1", "topk", 1, list(zip(steps, [4.0, 2.0, 3.0])), wps=[100.0, 300.0], wall=100.0,
              load=load, bleu={"bleu_tok": 20.0, "sacrebleu": 19.0, "subset": "test", "checkpoint": "best"})
    write_run(root, "topk-s2", "topk", 2, list(zip(steps, [4.0, 3.0, 1.0])), wps=[400.0], wall=300.0, load=load,
              bleu={"bleu_tok": 22.0, "sacrebleu": 21.0, "subset": "test", "checkpoint": "best"})
    write_run(root, "sm-s1", "sparsemixer", 1, list(zip(steps, [3.0, 2.0, 1.0])), load=load)
    write_run(root, "sm-s2", "sparsemixer", 2, list(zip(steps, [2.0, 1.0, 1.0])), load=load)
    return root
