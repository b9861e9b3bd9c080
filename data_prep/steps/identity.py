"""The identity of a prepared dataset, and the runs recorded as trained on it.

A binarized directory's identity is the sha256 of the sorted `<file> <sha256>` lines of its files (dictionaries,
.bin, .idx), so two directories holding the same bytes share it; for a prepared dataset the hashes are the ones its
manifest recorded (smx.run.dataid re-hashes the files against them). smx train appends `<id>\t<run dir>` to
<dataset>/runs.txt for each run it starts, so that a prep that would replace the dataset can name them; a line
counts while that run's meta.json still records the id under data.id.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

USERS_NAME = "runs.txt"


def combined_id(files: dict[str, str]) -> str:
    """sha256 over the sorted `<name> <sha256>` lines: the data's identity, independent of where it lies."""
    text = "".join(f"{name} {digest}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def manifest_files(bin_dir: Path) -> dict[str, dict] | None:
    """{file name: {"sha256", "bytes"}} of bin_dir from the data_prep manifest beside it (None: no manifest)."""
    try:
        man = json.loads((bin_dir.parent / "manifest.json").read_text(encoding="utf-8"))
        outputs = man["steps"]["binarize"]["outputs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(outputs, dict):
        return None
    return {Path(rel).name: entry for rel, entry in outputs.items()
            if isinstance(entry, dict) and Path(rel).parent.name == bin_dir.name and "sha256" in entry}


def prepared_id(bin_dir: Path) -> str | None:
    """The identity of a prepared dataset's bin/ from its manifest (None without one); nothing re-hashed."""
    recorded = manifest_files(bin_dir)
    return combined_id({name: str(e["sha256"]) for name, e in recorded.items()}) if recorded else None


def record_use(bin_dir: Path, run_path: Path, data_id: str) -> None:
    """Note in <dataset>/runs.txt that run_path trained on this data (best effort: read-only data is fine), so
    that `smx data prep --force` can say which runs a replacement affects."""
    if not (bin_dir.parent / "manifest.json").is_file():
        return
    try:
        with open(bin_dir.parent / USERS_NAME, "a", encoding="utf-8") as f:
            f.write(f"{data_id}\t{Path(run_path).resolve()}\n")
    except OSError:
        pass


def _same_dir(recorded, bin_dir: Path) -> bool:
    try:
        return isinstance(recorded, str) and Path(recorded).resolve() == Path(bin_dir).resolve()
    except OSError:
        return False


def users(dataset_dir: Path, data_id: str) -> list[Path]:
    """Run directories recorded in dataset_dir/runs.txt that still exist and still record data `data_id` read from
    this dataset's bin/ (a copied dataset directory carries the registry of the original: those runs do not count)."""
    try:
        lines = (Path(dataset_dir) / USERS_NAME).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    out: list[Path] = []
    for line in lines:
        did, _, path = line.partition("\t")
        if did != data_id or not path or Path(path) in out:
            continue
        try:
            meta = json.loads((Path(path) / "meta.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        data = meta.get("data") if isinstance(meta, dict) else None
        if isinstance(data, dict) and data.get("id") == data_id and _same_dir(data.get("dir"), dataset_dir / "bin"):
            out.append(Path(path))
    return out
