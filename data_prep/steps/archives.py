"""Reading members of tar(.gz) and zip archives, gzip files and WMT .sgm files, with one-line errors naming the file."""

from __future__ import annotations

import gzip
import re
import shutil
import tarfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

from smx.errors import UserError

from data_prep.steps.files import open_lines
from data_prep.steps.progress import Reporter

_CORRUPT = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, zipfile.BadZipFile)
_CHUNK = 1 << 20
_SEG_OPEN = re.compile(r'<seg id="?[^">]*"?>\s*')
_SEG_CLOSE = re.compile(r"\s*</seg>\s*")


def _match(name: str, wanted: Mapping[str, Path]) -> str | None:
    """The wanted key that member `name` is (exactly, or under a leading directory)."""
    name = name.removeprefix("./")
    for key in wanted:
        if name == key or name.endswith("/" + key):
            return key
    return None


def _copy(fin, dest: Path, advance) -> None:
    with open(dest, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            fout.write(chunk)
            advance(len(chunk))


def archive_error(archive: Path, e: BaseException) -> UserError:
    """One-line error for a corrupt or unreadable archive."""
    if isinstance(e, _CORRUPT):
        return UserError(f"corrupt archive {archive}: {e or type(e).__name__}")
    return UserError(f"cannot read {archive}: {getattr(e, 'strerror', None) or e}")


def check_found(archive: Path, wanted: Mapping[str, Path]) -> None:
    if wanted:
        raise UserError(f"{archive}: missing {', '.join(sorted(wanted))} (is this the right archive?)")


def extract_tar(archive: Path, members: Mapping[str, Path], reporter: Reporter) -> None:
    """Copy the named members of a (compressed) tar archive to their destinations, in one pass over the archive."""
    wanted = dict(members)
    try:
        with tarfile.open(archive, mode="r:*") as tar, reporter.task(f"extract {archive.name}", None, "B") as adv:
            for info in tar:
                key = _match(info.name, wanted) if info.isfile() else None
                if key is None:
                    continue
                fin = tar.extractfile(info)
                assert fin is not None
                _copy(fin, wanted.pop(key), adv)
                if not wanted:
                    break
    except (*_CORRUPT, OSError) as e:
        raise archive_error(archive, e) from None
    check_found(archive, wanted)


def extract_zip(archive: Path, members: Mapping[str, Path], reporter: Reporter) -> None:
    """Copy the named members of a zip archive to their destinations."""
    wanted = dict(members)
    try:
        with zipfile.ZipFile(archive) as zf, reporter.task(f"extract {archive.name}", None, "B") as adv:
            for info in zf.infolist():
                key = _match(info.filename, wanted) if not info.is_dir() else None
                if key is not None:
                    with zf.open(info) as fin:
                        _copy(fin, wanted.pop(key), adv)
    except (*_CORRUPT, OSError) as e:
        raise archive_error(archive, e) from None
    check_found(archive, wanted)


def gunzip(src: Path, dest: Path) -> None:
    """Decompress a .gz file to dest."""
    try:
        with gzip.open(src, "rb") as fin, open(dest, "wb") as fout:
            shutil.copyfileobj(fin, fout, _CHUNK)
    except _CORRUPT as e:
        raise UserError(f"corrupt gzip file {src}: {e or type(e).__name__}") from None
    except OSError as e:
        raise UserError(f"cannot read {src}: {e.strerror or e}") from None


def sgm_segments(path: Path) -> Iterator[str]:
    """The text of each <seg id=...> line of a WMT .sgm file, tags and surrounding spaces removed."""
    for line in open_lines(path):
        if "<seg id" in line:
            yield _SEG_CLOSE.sub("", _SEG_OPEN.sub("", line))
