"""`smx sweep --jobs 2`: both cells train as separate `smx train` processes, a rerun skips them (the real engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smx.cli import run

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_parallel_sweep_trains_both_cells_and_reruns_as_skips(tmp_path, capsys):
    import data_prep

    data = tmp_path / "data"
    data_prep.prepare("synthetic-mt", root=data, progress=False)
    study = tmp_path / "study"
    args = ["sweep", str(REPO / "recipes" / "tiny.yaml"), "--estimators", "topk,sparsemixer", "--seeds", "1",
            "--study-dir", str(study), "--jobs", "2", "--set", f"data.root={data}"]
    assert run(args) == 0
    for est in ("topk", "sparsemixer"):
        meta = json.loads((study / f"tiny-{est}-s1" / "meta.json").read_text())
        assert meta["status"] == "done" and meta["estimator"] == est
        assert (study / "logs" / f"tiny-{est}-s1.log").stat().st_size > 0
    capsys.readouterr()
    assert run(args) == 0
    assert capsys.readouterr().err.count(": skipped") == 2
