"""A data prep killed mid-way leaves nothing a later `smx train` would take for finished data (slow: it prepares
synthetic-mt, the dataset tiny.yaml trains on, twice)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from rel_helpers import TINY

import data_prep
from smx.recipe import recipes
from smx.run import train as training
from smx.cli import run as cli

pytestmark = pytest.mark.slow

# dies (SIGKILL) inside binarization, after fairseq-preprocess wrote a dictionary and part of a .bin
KILLED_PREP = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import data_prep
    from data_prep.steps import binarize

    def run(bpe_dir, dest, *a, **k):
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "dict.src.txt").write_text("a 1\\n")
        (dest / "dict.tgt.txt").write_text("a 1\\n")
        (dest / "train.src-tgt.src.bin").write_bytes(b"partial")
        (dest / "train.src-tgt.src.idx").write_bytes(b"partial")
        os.kill(os.getpid(), signal.SIGKILL)

    binarize.run = run
    data_prep.prepare("synthetic-mt", root=Path(sys.argv[1]), progress=False)
""")


def test_prep_killed_midway_is_never_taken_for_complete(tmp_path: Path, capsys):
    root = tmp_path / "data"
    res = subprocess.run([sys.executable, "-c", KILLED_PREP, str(root)], capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr
    d = root / "synthetic-mt"
    assert json.loads((d / "manifest.json").read_text())["complete"] is False
    assert not data_prep.is_prepared("synthetic-mt", root)
    assert not (d / "bin").exists() and (d / "bin.partial" / "dict.src.txt").is_file()

    # pointing a run at what the killed prep left is refused, before anything is written
    for bin_dir, message in ((d / "bin", "is not a directory"), (d / "bin.partial", "belongs to an unfinished prep")):
        assert cli(["train", str(TINY), "--runs-root", str(tmp_path / "runs"), "--set", f"data.dir={bin_dir}",
                    "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs").exists()

    # a run that names the dataset finishes the prep first (resumed: the finished steps are not redone)
    recipe = recipes.load(TINY, [f"data.root={root}"])
    bin_dir = training.data_dir(recipe, progress=False)
    assert bin_dir == d / "bin" and data_prep.is_prepared("synthetic-mt", root)
    assert data_prep.verify("synthetic-mt", root) == []
    assert not any(p.name.endswith(".partial") for p in d.rglob("*"))
