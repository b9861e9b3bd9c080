"""SIGTERM / SIGHUP to `smx data prep` while fairseq-preprocess binarizes (slow: a real prep of synthetic-mt).

The preprocess child must die with the prep (no orphan writing without the lock), the prep exits 130 naming the
signal, and a rerun finishes the dataset."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from rel_helpers import dead, smx_process, wait_for

import data_prep
from smx.engine import procfs

pytestmark = pytest.mark.slow


def preprocess_child(pid: int) -> int | None:
    for child in procfs.children(pid):
        try:
            if b"fairseq_cli.preprocess" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
        except OSError:
            continue
    return None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_during_binarization_stops_preprocess_too(sig, tmp_path: Path):
    root = tmp_path / "data"
    args = ["data", "prep", "synthetic-mt", "--out", str(root), "--opt", "train=60000", "--no-progress"]
    proc = smx_process(args)
    try:
        assert wait_for(lambda: preprocess_child(proc.pid), 240, proc), proc.communicate()
        child = preprocess_child(proc.pid)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert f"interrupted ({sig.name}): {root / 'synthetic-mt'} stays resumable; run the command again to continue" \
        in err and "Traceback" not in err
    assert wait_for(lambda: dead(child), 10), "fairseq-preprocess outlived the prep"
    assert not data_prep.is_prepared("synthetic-mt", root)
    again = smx_process(args)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert data_prep.is_prepared("synthetic-mt", root) and data_prep.verify("synthetic-mt", root) == []
