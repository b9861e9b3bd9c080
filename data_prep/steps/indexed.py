"""Reading sentence and token counts from a fairseq mmap .idx file without importing fairseq.

Index layout (fairseq MMapIndexedDataset): magic b"MMIDIDX\\x00\\x00", version <Q (1), dtype code <B,
number of sentences <Q, then int32 sizes (tokens per sentence, eos included) and int64 pointers.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from smx.errors import UserError

MAGIC = b"MMIDIDX\x00\x00"
_HEADER = len(MAGIC) + 8 + 1 + 8


def read_sizes(idx: Path) -> np.ndarray:
    """Tokens per sentence of a binarized split, shape (sentences,)."""
    with open(idx, "rb") as f:
        header = f.read(_HEADER)
        if len(header) < _HEADER or not header.startswith(MAGIC):
            raise UserError(f"{idx}: not a fairseq mmap index")
        (n,) = struct.unpack("<Q", header[len(MAGIC) + 9:])
        sizes = np.frombuffer(f.read(4 * n), dtype=np.int32)  # (sentences,)
    if sizes.shape[0] != n:
        raise UserError(f"{idx}: truncated index")
    return sizes


def count_tokens(idx: Path) -> int:
    return int(read_sizes(idx).sum(dtype=np.int64))


def count_sentences(idx: Path) -> int:
    return int(read_sizes(idx).shape[0])
