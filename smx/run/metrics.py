"""fairseq's --log-format json log lines -> metrics.jsonl entries (the run-directory format of DESIGN.md section 6),
and reading them back.

fairseq logs `<date> <time> | INFO | <tag> | {json}` with tag `train_inner` (every --log-interval updates), `train`
(end of epoch, keys prefixed `train_`) and `valid` (keys prefixed `valid_`); stat values are strings.
One entry per line of metrics.jsonl:

    {"step": 200, "split": "train", "epoch": 1, "loss": 7.91, "nll_loss": 7.6, "ppl": 194.0, "lr": 0.0007,
     "wps": 5123.0, "wall": 61.2, "moe_balance": 1.01, "moe_load_enc0_e0": 0.26, ...}

Losses are fairseq's (base 2). `wall` is seconds since the run started (summed over resumes). Other numeric
stats fairseq logs are kept under their own names (gnorm, clip, ups, wpb, bsz, train_wall, best_loss, ...);
fairseq's own `wall` becomes `engine_wall`. End-of-epoch train averages are entries with split "train" and
"epoch_end": true (readers skip them unless asked).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

_LINE_RE = re.compile(r"^\S+ \S+ \| (?P<level>[A-Z]+) \| (?P<tag>[\w.\-]+) \| (?P<msg>\{.*\})\s*$")
_SAVED_RE = re.compile(r"Saved checkpoint (?P<path>\S+) \(epoch (?P<epoch>\d+) @ (?P<updates>\d+) updates")
_LOADED_RE = re.compile(r"Loaded checkpoint (?P<path>\S+) \(epoch (?P<epoch>\d+) @ (?P<updates>\d+) updates\)")
_NONFINITE_RE = re.compile(r"SMX_NONFINITE (?P<json>\{.*\})")
_FP_ERROR_RE = re.compile(r"^FloatingPointError: (?P<what>.+)$")
_DROP = {"update", "num_updates", "epoch"}


@dataclass(frozen=True)
class CheckpointEvent:
    kind: str  # "saved" | "loaded"
    path: str
    epoch: int
    updates: int


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def parse_line(line: str, wall: float) -> dict | None:
    """One fairseq log line -> a metrics entry, or None when it is not a train_inner / train / valid json line."""
    m = _LINE_RE.match(line.strip())
    if m is None:
        return None
    tag = m.group("tag")
    if tag == "train_inner":
        split, prefix = "train", ""
    elif tag == "train":
        split, prefix = "train", "train_"
    elif tag.startswith("valid"):
        split, prefix = "valid", f"{tag}_"
    else:
        return None
    try:
        stats = json.loads(m.group("msg"))
    except json.JSONDecodeError:
        return None
    if not isinstance(stats, dict):
        return None
    values = {k[len(prefix):]: v for k, v in stats.items() if k.startswith(prefix)}
    step = _number(values.get("num_updates"))
    loss = _number(values.get("loss"))
    if step is None or loss is None:
        return None
    entry: dict[str, Any] = {"step": int(step), "split": split, "epoch": int(_number(stats.get("epoch")) or 0)}
    if tag != "valid" and split == "valid":
        entry["subset"] = tag
    for key, value in values.items():
        number = _number(value)
        if key in _DROP or number is None or math.isnan(number):
            continue
        entry["engine_wall" if key == "wall" else key] = number
    entry["wall"] = round(float(wall), 3)
    if tag == "train":
        entry["epoch_end"] = True
    return entry


def parse_event(line: str) -> CheckpointEvent | None:
    """fairseq's `Saved checkpoint ...` / `Loaded checkpoint ...` log lines."""
    for kind, rx in (("saved", _SAVED_RE), ("loaded", _LOADED_RE)):
        m = rx.search(line)
        if m is not None:
            return CheckpointEvent(kind, m.group("path"), int(m.group("epoch")), int(m.group("updates")))
    return None


def parse_nonfinite(line: str) -> dict | None:
    """The engine's `SMX_NONFINITE {"update", "split", "what", "value"}` line (smx.fairseq_plugin.guards), or a bare
    `FloatingPointError: ...` traceback line (fairseq's own NaN handling) as {"what": ..., "update": None}."""
    m = _NONFINITE_RE.search(line)
    if m is not None:
        try:
            data = json.loads(m.group("json"))
        except json.JSONDecodeError:
            return None
        return data if isinstance(data, dict) else None
    m = _FP_ERROR_RE.match(line.strip())
    if m is not None:
        return {"update": None, "split": "train", "what": m.group("what").strip(), "value": None}
    return None


def entry_key(entry: dict) -> tuple:
    """What makes an entry unique in metrics.jsonl (a resumed run logs the same key again)."""
    return entry["split"], entry.get("subset"), bool(entry.get("epoch_end")), entry["step"]


def recover(kept: list[dict], log_lines: Iterable[str], step: int) -> list[dict]:
    """Entries up to update `step` that earlier engine sessions wrote to train.log but metrics.jsonl lacks.

    That happens when smx was killed (kill -9) after the engine had logged a line and saved the checkpoint the run
    now resumes from, but before smx had read the line. The latest logged occurrence of each entry wins (as in
    read()); recovered entries get "recovered": true and the largest wall among the kept entries (a lower bound).
    """
    have = {entry_key(e) for e in kept}
    latest: dict[tuple, dict] = {}
    for e in parse_log(log_lines):
        if e["step"] <= step:
            latest[entry_key(e)] = e
    wall = max((float(e.get("wall", 0.0)) for e in kept), default=0.0)
    return [{**e, "wall": round(wall, 3), "recovered": True} for k, e in latest.items() if k not in have]


def parse_log(lines: Iterable[str], wall: float = 0.0) -> list[dict]:
    """Every metrics entry in a whole log (e.g. train.log), all with the same `wall`."""
    return [e for e in (parse_line(line, wall) for line in lines) if e is not None]


def dumps(entry: dict) -> str:
    return json.dumps(entry, separators=(",", ":"))


def entries(path: str | Path) -> list[dict]:
    """Every well-formed entry of a metrics.jsonl in file order: a JSON object with an integer `step` and a string
    `split`. Anything else is skipped like a line a kill cut short: a truncated or non-JSON line, a wrong-typed one
    (`"step": "x"`), bytes that are not UTF-8 (that line only)."""
    out = []
    for raw in Path(path).read_bytes().splitlines():
        try:
            entry = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if (isinstance(entry, dict) and isinstance(entry.get("step"), int) and not isinstance(entry["step"], bool)
                and isinstance(entry.get("split"), str)):
            out.append(entry)
    return out


def read(path: str | Path, split: str | None = None, epoch_end: bool = False) -> list[dict]:
    """metrics.jsonl -> entries in step order; `split` filters; epoch-end train averages only if epoch_end.

    Malformed lines are skipped (entries()). When a resumed run repeated steps, the later entry wins.
    """
    latest: dict[tuple, dict] = {}
    for entry in entries(path):
        if split is not None and entry["split"] != split:
            continue
        if entry.get("epoch_end") and not epoch_end:
            continue
        key = entry_key(entry)
        latest.pop(key, None)
        latest[key] = entry
    return sorted(latest.values(), key=lambda e: (e["step"], e["split"]))


def keep_until(entries: list[dict], step: int) -> list[dict]:
    """Entries up to and including update `step` (a resume from a checkpoint at `step` repeats the rest)."""
    return [e for e in entries if e["step"] <= step]


def last(entries: list[dict], split: str) -> dict | None:
    matching = [e for e in entries if e["split"] == split and not e.get("epoch_end")]
    return matching[-1] if matching else None
