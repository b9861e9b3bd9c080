"""The GPU check's CPU run (python -m bench gpu-check --device cpu --quick): every part end to end, so the script is
known to work before an accelerator sees it. Values asserted: the unit checks pass (device-form == CPU-form layer for
every estimator, grouped_mm == loop, no host sync), every layer row was timed, and the engine run trained and
scored BLEU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "gpu-check", "--device", "cpu", "--quick", "--json",
                           str(out), "--work", str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["ok"] is True and doc["device"] == "cpu" and doc["finished"] is True and "stopped" not in doc
    units = doc["parts"]["units"]
    assert all(row["ok"] for row in units["equivalence"]) and len(units["equivalence"]) >= 8 * 2 * 2
    assert all(row["syncs"] == {} for row in units["host_syncs"])
    layer = doc["parts"]["layer"]
    assert len(layer) >= 6 and all(row["median_a"] > 0 and row["median_b"] > 0 for row in layer)
    engine = doc["parts"]["train"]["engine"]
    assert engine["train_rc"] == 0 and engine["eval_rc"] == 0 and engine["median_wps"] > 0
    assert 0 <= engine["bleu"]["sacrebleu"] <= 100
    assert doc["parts"]["train"]["throughput"]["median_a"] > 0


def test_gpu_check_keeps_going_after_a_failed_part(tmp_path, monkeypatch):
    """A part that raises is recorded with its traceback, the other parts still run, the rows timed before a failure
    stay, the JSON is on disk after every part and every layer row (a run cut off by a time limit keeps what
    finished), and the exit code is 1."""
    import argparse

    from bench import gpu_check, gpu_layer, gpu_units
    from bench.harness import Pairs, make_row

    out = tmp_path / "gpu_check.json"
    seen_on_disk = {}

    def units_fail(device):
        raise RuntimeError("grouped_mm: planted failure")

    def one_row_then_fail(*args, **kwargs):
        seen_on_disk.update(json.loads(out.read_text()))  # written after the units part, before this one
        pairs = Pairs(times_a=[0.002, 0.004], times_b=[0.001, 0.002], work_a=[], work_b=[], other_cores=[0.0, 0.0],
                      discarded=0)
        yield make_row("E=8 top-1: MoE vs dense", "smx", "dense", pairs)
        seen_on_disk["layer_rows"] = json.loads(out.read_text())["parts"]["layer"]  # saved before the next row
        raise MemoryError("CUDA out of memory (planted)")

    monkeypatch.setattr(gpu_units, "run", units_fail)
    monkeypatch.setattr(gpu_layer, "rows", one_row_then_fail)
    args = argparse.Namespace(device="cpu", parts="units,layer", quick=True, json=str(out), work=str(tmp_path),
                              data_root=str(tmp_path / "data"), layer_budget_s=None)
    with pytest.raises(SystemExit) as stop:
        gpu_check.run(args)
    assert stop.value.code == 1
    assert seen_on_disk["finished"] is False and "planted failure" in seen_on_disk["errors"]["units"]
    assert "layer" not in seen_on_disk["errors"]
    assert [row["name"] for row in seen_on_disk["layer_rows"]] == ["E=8 top-1: MoE vs dense"]
    doc = json.loads(out.read_text())
    assert doc["finished"] is True and doc["ok"] is False
    assert set(doc["errors"]) == {"units", "layer"} and "RuntimeError" in doc["errors"]["units"]
    assert "MemoryError: CUDA out of memory (planted)" in doc["errors"]["layer"]
    assert [row["name"] for row in doc["parts"]["layer"]] == ["E=8 top-1: MoE vs dense"]
    assert doc["parts"]["layer"][0]["ratio"] == 2.0 and set(doc["seconds"]) == {"units", "layer"}


def test_gpu_check_layer_budget_stops_the_rows(tmp_path, monkeypatch):
    """--layer-budget-s: once the layer part has run that long no further row is timed (the generator is left), the
    stop is noted under "stopped", it is not an error, and the rows timed stay in the JSON."""
    import argparse

    from bench import gpu_check, gpu_layer
    from bench.harness import Pairs, make_row

    timed = []

    def endless_rows(*args, **kwargs):
        while True:
            timed.append(len(timed))
            pairs = Pairs(times_a=[0.003], times_b=[0.001], work_a=[], work_b=[], other_cores=[0.0], discarded=0)
            yield make_row(f"row {len(timed)}", "a", "b", pairs)

    monkeypatch.setattr(gpu_layer, "rows", endless_rows)
    out = tmp_path / "gpu_check.json"
    args = argparse.Namespace(device="cpu", parts="layer", quick=True, json=str(out), work=str(tmp_path),
                              data_root=str(tmp_path / "data"), layer_budget_s=1e-9)
    doc = gpu_check.run(args)
    assert timed == [0] and doc["ok"] is True and "errors" not in doc
    assert json.loads(out.read_text())["stopped"] == {
        "layer": "after 1 rows: the layer budget of 1e-09 s was spent (--layer-budget-s)"}
    assert [row["name"] for row in doc["parts"]["layer"]] == ["row 1"] and doc["parts"]["layer"][0]["ratio"] == 3.0


@pytest.mark.parametrize("extra, message", [
    (["--parts", "units,gpu"], "gpu-check: --parts gpu unknown; choose from units,layer,train"),
    (["--layer-budget-s", "-5"], "gpu-check: --layer-budget-s -5: expected a number of seconds >= 0 (0: no budget)"),
    (["--layer-budget-s", "nan"], "gpu-check: --layer-budget-s nan: expected a number of seconds >= 0 (0: no budget)"),
])
def test_gpu_check_bad_option_is_a_usage_error(tmp_path, extra, message):
    proc = subprocess.run([sys.executable, "-m", "bench", "gpu-check", "--device", "cpu", *extra,
                           "--json", str(tmp_path / "x.json")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == message
    assert not (tmp_path / "x.json").exists()
