"""Helpers for the data_prep tests: a Prep on a temporary root, fairseq loading, tree comparison."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

import data_prep
from data_prep.steps.manifest import Manifest
from data_prep.steps.progress import Reporter
from data_prep.steps.runner import Prep


def make_prep(root: Path, name: str = "ds", workers: int = 1) -> Prep:
    root_dir = root / name
    root_dir.mkdir(parents=True, exist_ok=True)
    return Prep(name, root_dir, Manifest.load(root_dir), Reporter(False), workers, root / ".cache")


def fairseq_counts(bin_dir: Path, src: str, tgt: str | None) -> dict[str, int]:
    """Sentences per split as fairseq itself loads them (Dictionary.load + load_indexed_dataset)."""
    from fairseq.data import Dictionary, data_utils

    counts = {}
    for split in ("train", "valid", "test"):
        if tgt is None:
            d = Dictionary.load(str(bin_dir / "dict.txt"))
            ds = data_utils.load_indexed_dataset(str(bin_dir / split), d)
            assert ds is not None, split
            counts[split] = len(ds)
            continue
        per_lang = []
        for lang in (src, tgt):
            d = Dictionary.load(str(bin_dir / f"dict.{lang}.txt"))
            ds = data_utils.load_indexed_dataset(str(bin_dir / f"{split}.{src}-{tgt}.{lang}"), d)
            assert ds is not None, (split, lang)
            assert int(ds[0][-1]) == d.eos()
            per_lang.append(len(ds))
        assert per_lang[0] == per_lang[1], (split, per_lang)
        counts[split] = per_lang[0]
    return counts


def tree(root: Path, exclude: tuple[str, ...] = ("manifest.json", "logs", ".lock")) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes), minus run-specific files."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel.split("/")[0] not in exclude:
            out[rel] = p.read_bytes()
    return out


def stable_manifest(data: dict) -> dict:
    """A manifest without timings, times and the source location (which differ between equivalent runs)."""
    d = copy.deepcopy(data)
    for rec in d["steps"].values():
        rec.pop("seconds", None)
        rec.pop("finished", None)
        rec.get("meta", {}).pop("from", None)
    d["summary"].pop("timings", None)
    d["summary"].pop("total_seconds", None)
    return d


# A small synthetic-mt prep shared by the resume tests (tests/data_prep/test_data_resume.py, tests/e2e).
NAME = "synthetic-mt"
OPTIONS = {"train": 300, "valid": 40, "test": 30, "domains": 3, "words": 20}
MERGES = 30


def prepare_small(root: Path, **kw) -> Path:
    return data_prep.prepare(NAME, root=root, bpe_merges=MERGES, progress=False, options=OPTIONS, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted prep shared by the tests of a module."""
    root = tmp_path_factory.mktemp("reference")
    prepare_small(root)
    return root
