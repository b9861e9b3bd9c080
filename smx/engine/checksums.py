"""Checkpoint hashes: checkpoints/SHA256SUMS, written by the engine when it saves, checked before anything unpickles.

Imports neither fairseq nor torch: the launcher (smx.run.paths, smx.eval.evaluate) and the engine hooks
(smx.fairseq_plugin.guards) share it.

SHA256SUMS is in `sha256sum -c` format, one `<hex>  <file name>` line per checkpoint. A checkpoint is recorded
BEFORE it appears under its final name (see record_pending / record_final): the engine writes `<name>.tmp`, hashes it,
lists the new hash next to the old one, renames the file into place, then drops the old hash. A kill at any point
leaves every checkpoint file with a listed hash; only in that short window does a name have two accepted lines.

Why: checkpoints are pickles, and unpickling a file runs whatever code it names. smx only unpickles a checkpoint
whose bytes match a hash recorded when smx saved it (or when the user passes --trust-checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

SUMS_NAME = "SHA256SUMS"
# Engine environment switches (set by smx.engine.launch / smx.eval.evaluate for their engine subprocesses):
RECORD_ENV = "SMX_RECORD_CHECKPOINT_SHA256"  # "1": hash every checkpoint the engine saves into SHA256SUMS
VERIFY_ENV = "SMX_VERIFY_CHECKPOINT_SHA256"  # JSON {absolute path: sha256}: refuse to load a file that differs


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_SUM_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


def read_sums(directory: str | Path) -> dict[str, list[str]]:
    """{file name: [accepted sha256, ...]} from directory/SHA256SUMS ({} when there is none)."""
    try:
        text = (Path(directory) / SUMS_NAME).read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return {}
    sums: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = _SUM_LINE.match(line)  # `<hex>  name` (text mode) or `<hex> *name` (sha256sum -b)
        if m:
            sums.setdefault(m.group(2), []).append(m.group(1).lower())
    return sums


def write_sums(directory: str | Path, sums: dict[str, list[str]]) -> None:
    """Replace directory/SHA256SUMS atomically (write, fsync, rename, fsync the directory)."""
    directory = Path(directory)
    tmp = directory / (SUMS_NAME + ".tmp")
    lines = "".join(f"{d}  {name}\n" for name in sorted(sums) for d in dict.fromkeys(sums[name]))
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / SUMS_NAME)
    fsync_dir(directory)


def fsync_dir(directory: str | Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def record_pending(directory: str | Path, name: str, digest: str) -> None:
    """Accept `digest` for `name` in addition to what is listed (before the new file is renamed into place)."""
    sums = read_sums(directory)
    sums[name] = [digest] + [d for d in sums.get(name, []) if d != digest]
    write_sums(directory, sums)


def record_final(directory: str | Path, name: str, digest: str) -> None:
    """`name` now holds the file with `digest`: drop every other hash of it; drop lines of files that are gone."""
    directory = Path(directory)
    sums = {n: ds for n, ds in read_sums(directory).items() if (directory / n).exists()}
    sums[name] = [digest]
    write_sums(directory, sums)


def prune(directory: str | Path) -> None:
    """Drop the lines of files that no longer exist (old interval checkpoints the engine removed)."""
    directory = Path(directory)
    sums = read_sums(directory)
    kept = {n: ds for n, ds in sums.items() if (directory / n).exists()}
    if kept != sums:
        write_sums(directory, kept)


def check(path: str | Path, recorded_as: str | Path | None = None,
          also: tuple[str, ...] = ()) -> tuple[str | None, str]:
    """(problem or None, sha256 of the file) for `path` against the SHA256SUMS next to it, or, for a pinned link
    or copy, next to the checkpoint it was taken from (`recorded_as`); `also`: hashes listed there earlier."""
    path = Path(path)
    name = Path(recorded_as) if recorded_as is not None else path
    digest = sha256_file(path)
    listed = [*read_sums(name.parent).get(name.name, []), *also]
    if not (name.parent / SUMS_NAME).is_file():
        return f"{name}: no recorded sha256 ({name.parent / SUMS_NAME} is missing)", digest
    if not listed:
        return f"{name}: no recorded sha256 in {name.parent / SUMS_NAME}", digest
    if digest not in listed:
        return (f"{name}: sha256 {digest[:12]}... does not match the recorded {listed[0][:12]}... "
                f"({name.parent / SUMS_NAME}): the file changed after smx saved it"), digest
    return None, digest


def expected_from_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The {realpath: sha256} map of VERIFY_ENV ({} when unset or unreadable)."""
    text = (os.environ if environ is None else environ).get(VERIFY_ENV, "")
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return {os.path.realpath(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def verify_env_value(digests: dict[str | Path, str]) -> str:
    """VERIFY_ENV's value for {path: sha256}."""
    return json.dumps({os.path.realpath(str(p)): d for p, d in digests.items()}, sort_keys=True)


def verify_expected(path: str | Path, environ: dict[str, str] | None = None) -> None:
    """Raise ValueError when VERIFY_ENV names `path` with another sha256 (called right before unpickling)."""
    expected = expected_from_env(environ).get(os.path.realpath(str(path)))
    if expected is None:
        return
    got = sha256_file(path)
    if got != expected:
        raise ValueError(f"refusing to load checkpoint {path}: its sha256 {got[:12]}... is not the verified "
                         f"{expected[:12]}... (the file changed after smx checked it; checkpoints are pickles)")
