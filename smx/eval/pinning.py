"""Checkpoints pinned for an evaluation, so that `smx eval` works while the run still trains.

    with pinned(files, run / "eval", trust=False) as (pins, digests):  # pins[i]: a hard link of files[i]
        ...evaluate pins[0]...

The engine replaces checkpoint_last.pt / checkpoint_best.pt by renaming a new file over them and removes old
numbered checkpoints (keep_last), so a file checked by path could change or vanish before the engine loads it. A hard
link (a copy where links are not possible) holds the bytes that were checked: its hash is taken from the pinned file
and accepted when SHA256SUMS listed it just before or just after the link was made (the engine lists a new hash
before it renames the file into place, and drops the old one after). The pins are removed on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from smx.engine import checksums
from smx.errors import UserError
from smx.run.paths import verify_checkpoint


@contextlib.contextmanager
def pinned(files: list[Path], where: Path, trust: bool = False) -> Iterator[tuple[list[Path], dict[Path, str]]]:
    """(pinned paths in order, {pinned path: verified sha256}); UserError (unless `trust`) as verify_checkpoint
    (the caller has checked the files themselves before, and said what `trust` accepted)."""
    where.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pinned-", dir=where) as tmp:
        pins, digests = [], {}
        for i, original in enumerate(files):
            before = tuple(checksums.read_sums(original.parent).get(original.name, []))
            pin = Path(tmp) / f"{i}-{original.name}"
            try:
                os.link(original, pin)
            except FileNotFoundError:
                raise UserError(f"{original}: removed by the training run while smx eval started; run it again") \
                    from None
            except OSError:  # another filesystem, or links not allowed: a copy
                shutil.copyfile(original, pin)
            digests[pin] = verify_checkpoint(pin, trust, lambda msg: None, recorded_as=original, also=before)
            pins.append(pin)
        yield pins, digests
