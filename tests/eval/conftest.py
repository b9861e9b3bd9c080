"""Fixtures for tests/eval (helpers live in eval_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from smx.run.paths import write_checksums

from eval_helpers import HYPS_TOK, REFS_RAW, REFS_TOK, generate_output, write_idx, write_lines  # noqa: F401


@pytest.fixture
def fake_run(tmp_path: Path) -> Path:
    """A translation run dir (recipe.yaml, checkpoint_best.pt placeholder) over a fake prepared dataset."""
    data = tmp_path / "data" / "synthetic-mt"
    n = len(REFS_TOK)
    for split in ("test", "valid"):
        write_idx(data / "bin" / f"{split}.en-de.en.idx", n)
        write_idx(data / "bin" / f"{split}.en-de.de.idx", n)
        write_lines(data / "tok" / f"{split}.de", REFS_TOK)
        write_lines(data / "raw" / f"{split}.de", REFS_RAW)
    run = tmp_path / "runs" / "t-sparsemixer-s1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "recipe.yaml").write_text(yaml.safe_dump({
        "name": "t", "task": "translation", "seed": 1,
        "data": {"dataset": "synthetic-mt", "root": str(tmp_path / "data")},
        "train": {"max_update": 10}, "eval": {"beam": 5, "lenpen": 1.0}}))
    (run / "meta.json").write_text('{"name": "t-sparsemixer-s1", "status": "done"}')
    (run / "checkpoints" / "checkpoint_best.pt").write_bytes(b"placeholder")
    write_checksums(run / "checkpoints")  # as if smx had saved it (eval refuses checkpoints without a recorded hash)
    return run
