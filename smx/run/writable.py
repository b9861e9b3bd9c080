"""Checks that an output path can be written, made BEFORE the work (training, a study, a prep) and not after it.

    check_dir(Path("runs/tiny-topk-s1"), "--run-dir")   # UserError: "--run-dir runs/x/y: runs/x is a file, ..."
    check_file(Path("out/grad.json"), "--json")          # a file to (re)write: its directory must be writable

Each raises one UserError naming the option and the path component at fault: a file where a directory is expected,
a directory that is not writable (permissions or a read-only mount), a name over the filesystem's length limit.
"""

from __future__ import annotations

import os
from pathlib import Path

from smx.errors import UserError


def _exists(path: Path) -> bool:
    try:
        os.lstat(path)
        return True
    except OSError:  # missing, or a name the filesystem cannot hold (ENAMETOOLONG)
        return False


def _existing_ancestor(path: Path) -> Path:
    p = path
    while not _exists(p) and p != p.parent:
        p = p.parent
    return p


def _name_max(directory: Path) -> int:
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_dir(path: str | Path, what: str) -> None:
    """`path` is a writable directory, or one that can be created (with its parents)."""
    path = Path(path)
    absolute = Path(os.path.abspath(path))
    base = _existing_ancestor(absolute)
    if not base.is_dir():
        raise UserError(f"{what} {path}: {base} is a file, not a directory")
    limit = _name_max(base)
    for part in absolute.relative_to(base).parts:
        if len(os.fsencode(part)) > limit:
            raise UserError(f"{what} {path}: the name {part[:40]}... is {len(os.fsencode(part))} bytes, over the "
                            f"filesystem's limit of {limit}")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: {base} is not writable (permissions or a read-only filesystem)")


def check_file(path: str | Path, what: str) -> None:
    """`path` can be (re)written: not a directory, and its directory is writable or can be created."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path}: is a directory, expected a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{what} {path}: not writable")
    check_dir(path.parent, what)
    limit = _name_max(_existing_ancestor(Path(os.path.abspath(path.parent))))
    if len(os.fsencode(path.name)) > limit:
        raise UserError(f"{what} {path}: the file name is {len(os.fsencode(path.name))} bytes, over the "
                        f"filesystem's limit of {limit}")
