"""The GPU check's CPU run (python -m bench gpu-check --device cpu --quick): every part end to end, so the script is
known to work before an accelerator sees it. Values asserted: the unit checks pass (device-form == CPU-form layer for
every estimator, grouped_mm == loop, no host sync), every layer row was timed, and the engine run trained and
scored BLEU."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "gpu-check", "--device", "cpu", "--quick", "--json",
                           str(out), "--work", str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["ok"] is True and doc["device"] == "cpu"
    units = doc["parts"]["units"]
    assert all(row["ok"] for row in units["equivalence"]) and len(units["equivalence"]) >= 8 * 2 * 2
    assert all(row["syncs"] == {} for row in units["host_syncs"])
    layer = doc["parts"]["layer"]
    assert len(layer) >= 6 and all(row["median_a"] > 0 and row["median_b"] > 0 for row in layer)
    engine = doc["parts"]["train"]["engine"]
    assert engine["train_rc"] == 0 and engine["eval_rc"] == 0 and engine["median_wps"] > 0
    assert 0 <= engine["bleu"]["sacrebleu"] <= 100
    assert doc["parts"]["train"]["throughput"]["median_a"] > 0
