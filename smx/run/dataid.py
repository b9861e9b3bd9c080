"""The identity of a run's data: recorded by `smx train` in meta.json["data"], checked by resume, eval and compare.

    ident = identity(Path("data/ding-de-en/bin"))  # DataIdentity(dir=..., id="3f2a...", files={"dict.de.txt": ...})
    check(meta.get("data"), ident, "--resume runs/x")  # UserError naming both when the data changed under the run

A prepared dataset (bin/ next to a data_prep manifest.json) is identified by the sha256 its manifest recorded for
every binarized file (dictionaries, .bin, .idx); the files are re-hashed against those values, so same-size
garbage written into a .bin is refused too (data larger than VERIFY_LIMIT_BYTES is not re-hashed: the caller is told
to run `smx data verify`). A data.dir without a manifest (binarized elsewhere) is identified by hashing its files.
The id is the sha256 of the sorted `<file> <sha256>` lines, so two directories holding the same bytes share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from data_prep.steps.identity import combined_id, manifest_files, record_use, users  # noqa: F401 (API)
from smx.engine.checksums import sha256_file
from smx.errors import UserError

VERIFY_LIMIT_BYTES = 8 << 30  # re-hash prepared data up to this size at every train / eval start (~10 s)
_PATTERNS = ("dict*.txt", "*.bin", "*.idx")  # what fairseq reads from a binarized directory


@dataclass(frozen=True)
class DataIdentity:
    dir: Path
    id: str
    files: dict[str, str]  # file name in dir -> sha256
    source: str  # manifest | hashed
    notes: tuple[str, ...] = field(default=())

    def to_meta(self) -> dict:
        return {"dir": str(self.dir.resolve()), "id": self.id, "source": self.source, "files": dict(sorted(self.files.items()))}


def identity(bin_dir: str | Path, verify: bool = True) -> DataIdentity:
    """The identity of a binarized data directory; UserError when a file no longer matches its manifest."""
    bin_dir = Path(bin_dir)
    recorded = manifest_files(bin_dir)
    if recorded:
        files = {name: str(entry["sha256"]) for name, entry in recorded.items()}
        notes: list[str] = []
        if verify:
            total = sum(int(entry.get("bytes") or 0) for entry in recorded.values())
            if total <= VERIFY_LIMIT_BYTES:
                _verify(bin_dir, recorded)
            else:
                notes.append(f"{bin_dir}: {total / 2**30:.1f} GiB of data not re-hashed here; check it with "
                             f"smx data verify {bin_dir.parent.name}")
        return DataIdentity(bin_dir, combined_id(files), files, "manifest", tuple(notes))
    found = sorted({p for pattern in _PATTERNS for p in bin_dir.glob(pattern) if p.is_file()})
    files = {p.name: sha256_file(p) for p in found}
    return DataIdentity(bin_dir, combined_id(files), files, "hashed")


def _verify(bin_dir: Path, recorded: dict[str, dict]) -> None:
    prep = f"smx data verify {bin_dir.parent.name}" + (
        f" --root {bin_dir.parent.parent}" if bin_dir.parent.parent != Path("data") else "")
    for name, entry in sorted(recorded.items()):
        p = bin_dir / name
        if not p.is_file():
            raise UserError(f"{p}: missing (listed in {bin_dir.parent / 'manifest.json'}); re-prepare the dataset")
        if p.stat().st_size != entry.get("bytes", p.stat().st_size) or sha256_file(p) != entry["sha256"]:
            raise UserError(f"{p}: its sha256 differs from {bin_dir.parent / 'manifest.json'} (the file changed "
                            f"after the prep); see {prep}, then re-prepare the dataset")


def check(recorded: dict | None, current: DataIdentity, context: str) -> None:
    """Refuse `current` when the run recorded other data (runs from before smx recorded it are not checked)."""
    if not isinstance(recorded, dict) or not recorded.get("id") or recorded["id"] == current.id:
        return
    old = recorded.get("files") if isinstance(recorded.get("files"), dict) else {}
    changed = sorted(n for n in set(old) | set(current.files) if old.get(n) != current.files.get(n))
    shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
    raise UserError(
        f"{context}: {current.dir} is not the data the run was trained on (trained on {recorded.get('dir')} "
        f"id {str(recorded['id'])[:12]}, now id {current.id[:12]}; differs: {shown or 'the file set'}); point "
        "data.root / data.dir at the original data, or re-prepare it with the settings the run used")


def translation_pair(bin_dir: Path, subset: str, recipe) -> tuple[str, str]:
    """(src, tgt) of a translation run: the recipe's languages, else the pair the binarized subset files name."""
    if recipe.data.source_lang and recipe.data.target_lang:
        return recipe.data.source_lang, recipe.data.target_lang
    pairs = sorted({p.name.split(".")[1] for p in bin_dir.glob(f"{subset}.*-*.*.idx")})
    if len(pairs) != 1:
        raise UserError(f"{bin_dir}: expected the files of one language pair for subset {subset}, "
                        f"found {pairs or 'none'}")
    src, tgt = pairs[0].split("-")
    return recipe.data.source_lang or src, recipe.data.target_lang or tgt
