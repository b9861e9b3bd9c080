"""smx.run.metrics: fairseq json log lines -> metrics.jsonl entries, and reading them back."""

from __future__ import annotations

import json
from pathlib import Path

from smx.run import metrics

LOG = (Path(__file__).parent / "data" / "fairseq_json.log").read_text().splitlines()


def test_parse_real_fairseq_lines():
    entries = metrics.parse_log(LOG, wall=12.5)
    assert [(e["split"], e["step"], e.get("epoch_end", False)) for e in entries] == [
        ("train", 10, False), ("valid", 16, False), ("train", 16, True)]
    inner, valid, epoch = entries
    assert inner["epoch"] == 1 and inner["loss"] == 8.327 and inner["nll_loss"] == 8.232 and inner["wall"] == 12.5
    for key in ("ppl", "lr", "wps", "moe_balance", "moe_load_enc0_e0", "moe_load_dec0_e3", "moe_entropy"):
        assert isinstance(inner[key], float), key
    assert "update" not in inner and "num_updates" not in inner and "engine_wall" in inner
    assert valid["loss"] == 6.192 and "moe_balance" in valid and "lr" not in valid and valid["ppl"] == 57.11
    assert epoch["loss"] == 7.824


def test_schema_types_are_json_numbers():
    for entry in metrics.parse_log(LOG, wall=1.0):
        assert isinstance(entry["step"], int) and isinstance(entry["epoch"], int)
        assert entry["split"] in ("train", "valid")
        assert all(isinstance(v, (int, float)) for k, v in entry.items() if k not in ("split", "subset"))
        assert json.loads(metrics.dumps(entry)) == entry


def test_other_lines_ignored():
    assert metrics.parse_line("2026-11-23 15:52:00 | WARNING | fairseq.trainer | a warning with {braces}", 0) is None
    assert metrics.parse_line("| INFO | train_inner | {not json}", 0) is None
    assert metrics.parse_line('2026-01-01 00:00:00 | INFO | train_inner | {"epoch": 1}', 0) is None  # no loss/step


def test_checkpoint_events():
    events = [e for e in map(metrics.parse_event, LOG) if e]
    assert [(e.kind, e.path, e.epoch, e.updates) for e in events] == [
        ("saved", "r1/checkpoints/checkpoint_best.pt", 1, 16),
        ("loaded", "r1/checkpoints/checkpoint_last.pt", 2, 30)]


def test_read_skips_torn_lines_dedupes_resumed_steps_and_filters(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 10, "split": "train", "epoch": 1, "loss": 5.0, "wall": 1},
            {"step": 20, "split": "valid", "epoch": 1, "loss": 4.0, "wall": 2},
            {"step": 20, "split": "train", "epoch": 1, "loss": 4.5, "wall": 2, "epoch_end": True},
            {"step": 10, "split": "train", "epoch": 1, "loss": 4.9, "wall": 3}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 30, "spl')
    assert [(e["step"], e["loss"]) for e in metrics.read(path)] == [(10, 4.9), (20, 4.0)]
    assert [e["loss"] for e in metrics.read(path, split="train", epoch_end=True)] == [4.9, 4.5]
    assert metrics.last(metrics.read(path), "valid")["loss"] == 4.0
    assert metrics.keep_until(metrics.read(path), 10) == [metrics.read(path)[0]]


def test_malformed_lines_are_skipped_not_fatal(tmp_path):
    """Issue 15 item 12: a wrong-typed line and a non-UTF-8 byte used to crash compare and resume."""
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 1, "split": "train", "loss": 3.0}\n'
                     b'{"step": "x", "split": "train", "loss": 1.0}\n'  # wrong type
                     b'{"step": 2, "split": 7}\n'  # wrong type
                     b'{"step": true, "split": "train"}\n'  # bool is not an update number
                     b'{"step": 2, "split": "valid", "loss": 2.\xff}\n'  # not UTF-8
                     b'[1, 2]\n'
                     b'{"step": 3, "split": "valid", "loss": 1.5}\n'
                     b'{"step": 4, "split": "tra')  # cut by a kill
    assert [(e["step"], e["split"]) for e in metrics.entries(path)] == [(1, "train"), (3, "valid")]
    assert [e["loss"] for e in metrics.read(path)] == [3.0, 1.5]
