"""root/<name>/manifest.json: what was prepared, from what, how, and whether it finished.

Layout:
    {"format": 1, "name", "task", "src_lang", "tgt_lang",
     "complete": bool,                 # true only once every step finished (written last)
     "settings": {...},                # the exact settings of the whole prep (tokenizer, cleaning, BPE, versions)
     "steps": {step: {"settings", "inputs": {rel: sha256}, "outputs": {rel: {sha256, bytes, lines}},
                      "meta": {...}, "seconds": float, "finished": iso-time}},
     "summary": {"sizes": {split: sentences}, "vocab": {...}, "bpe_merges": int, "timings": {step: seconds},
                 "total_seconds": float}}
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

from smx.errors import UserError

from data_prep.steps.files import write_atomic

FORMAT = 1
MANIFEST = "manifest.json"


@dataclass
class Manifest:
    """The in-memory manifest of one dataset directory; save() writes it atomically."""

    path: Path
    data: dict = field(default_factory=dict)

    @classmethod
    def load(cls, root_dir: Path) -> Manifest:
        path = root_dir / MANIFEST
        if not path.exists():
            return cls(path, {"format": FORMAT, "complete": False, "steps": {}})
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"corrupt manifest {path}: {e}; delete it to prepare from scratch") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("steps"), dict):
            raise UserError(f"unrecognized manifest {path} (expected format {FORMAT}); delete it to start over")
        return cls(path, data)

    @property
    def steps(self) -> dict:
        return self.data["steps"]

    @property
    def complete(self) -> bool:
        return bool(self.data.get("complete"))

    def snapshot(self) -> dict:
        return copy.deepcopy(self.data)

    def save(self) -> None:
        text = json.dumps(self.data, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
        write_atomic(self.path, text.encode("utf-8"))

    def mark_incomplete(self) -> None:
        """Called before any work: a later reader must never see 'complete' while files are changing."""
        if self.data.get("complete", False) or not self.path.exists():
            self.data["complete"] = False
            self.save()


def read(root_dir: Path) -> dict | None:
    """The manifest of root_dir as a dict, or None if there is none or it cannot be parsed."""
    try:
        data = json.loads((root_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def normalized(obj) -> object:
    """A JSON round trip, so settings compare equal to what a saved manifest holds."""
    return json.loads(json.dumps(obj, sort_keys=True))
