"""File helpers shared by every pipeline: hashing, line counts, temporary names, line reading with clear errors.

Every output is written under a temporary name (`<name>.partial`) and renamed into place only once complete, so an
interrupted step never leaves a file that looks finished.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from smx.errors import UserError

PARTIAL_SUFFIX = ".partial"
BINARY_SUFFIXES = (".bin", ".idx", ".gz", ".tgz", ".zip", ".deb", ".tar", ".xz", ".bz2")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileDigest:
    """sha256, size and (for text files) newline count of one file."""

    sha256: str
    bytes: int
    lines: int | None

    def as_json(self) -> dict:
        d: dict = {"sha256": self.sha256, "bytes": self.bytes}
        if self.lines is not None:
            d["lines"] = self.lines
        return d


def is_text(path: Path) -> bool:
    return not path.name.endswith(BINARY_SUFFIXES)


def digest(path: Path) -> FileDigest:
    """Hash a file in one pass; text files also get their line count (as open_lines() would yield them)."""
    h = hashlib.sha256()
    n_bytes = 0
    n_lines = 0
    last = b"\n"
    text = is_text(path)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                n_bytes += len(chunk)
                if text:
                    n_lines += chunk.count(b"\n")
                last = chunk[-1:]
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if last != b"\n":  # a final line without newline still counts, as open_lines() yields it
        n_lines += 1
    return FileDigest(h.hexdigest(), n_bytes, n_lines if text else None)


def partial(path: Path) -> Path:
    """The temporary name an output is written under before it is complete."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


def remove(path: Path) -> None:
    """Remove a file or a directory tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def commit(tmp: Path, final: Path) -> None:
    """Move a finished temporary output (file or directory) into place, replacing an older one."""
    if tmp.is_dir():
        remove(final)
        os.replace(tmp, final)
    else:
        os.replace(tmp, final)


def files_under(path: Path) -> list[Path]:
    """A file itself, or every file below a directory in sorted order."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes to path via a temporary name, fsync'd, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def open_lines(path: Path) -> Iterator[str]:
    """Yield the lines of a UTF-8 text file (optionally .gz) without their newline; only '\\n' ends a line.

    Invalid UTF-8 is replaced (U+FFFD), deterministically. Unreadable or corrupt files raise a one-line UserError.
    """
    try:
        if path.name.endswith(".gz"):
            raw = gzip.open(path, "rb")
        else:
            raw = open(path, "rb")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        with raw:
            for line in raw:
                yield line.rstrip(b"\n").decode("utf-8", errors="replace")
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise UserError(f"corrupt gzip file {path}: {e}") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None


def count_lines(path: Path) -> int:
    return sum(1 for _ in open_lines(path))


def write_lines(path: Path, lines) -> int:
    """Write lines (str, without newlines) to path as UTF-8, one per line; returns the count."""
    n = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line)
            f.write("\n")
            n += 1
    return n
