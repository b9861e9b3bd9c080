"""Dataset preparation for smx: download or read sources, Moses tokenization, joint BPE, fairseq binarization.

API (what the train code calls):
    names() -> list[str]
    info(name) -> DatasetInfo(name, task, src_lang, tgt_lang, offline, description)
    prepare(name, root=Path("data"), source=None, bpe_merges=None, workers=1, progress=True, *, options=None) -> Path
    is_prepared(name, root=Path("data")) -> bool
    bin_dir(name, root=Path("data")) -> Path
    verify(name, root=Path("data")) -> list[str]   (problems found by re-hashing every recorded output)
    manifest(name, root=Path("data")) -> dict | None

Everything lands in root/<name>/ (raw/, tok/, bpe/, bin/, logs/, manifest.json). Each step is skipped when the
manifest shows it done with the same settings and inputs, and redone if it was interrupted; manifest "complete" is
set only at the very end. Downloads and unpacked packages are cached in $SMX_DATA_CACHE or root/.cache.

Bad input leaves no trace: a prep from local files (--source PATH) or a generated dataset that fails with a
UserError (missing, empty, truncated or corrupt file, line-count mismatch, ...) removes the directories it created;
a failed prep from the network keeps what it downloaded so that a re-run resumes.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import shutil
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

from smx.errors import UserError

from data_prep.steps import identity as _identity
from data_prep.steps import manifest as _manifest
from data_prep.steps import pipeline
from data_prep.steps.fetch import parse_source
from data_prep.steps.files import digest
from data_prep.steps.progress import Reporter
from data_prep.registry import REGISTRY, get
from data_prep.steps.runner import Prep, locked
from data_prep.steps.spec import SPLITS, DatasetInfo

__all__ = ["DatasetInfo", "bin_dir", "info", "is_prepared", "manifest", "names", "prepare", "verify"]


def names() -> list[str]:
    return list(REGISTRY)


def info(name: str) -> DatasetInfo:
    return get(name).info


def bin_dir(name: str, root: Path | str = Path("data")) -> Path:
    get(name)
    return Path(root) / name / "bin"


def manifest(name: str, root: Path | str = Path("data")) -> dict | None:
    get(name)
    return _manifest.read(Path(root) / name)


def is_prepared(name: str, root: Path | str = Path("data")) -> bool:
    """True only if the manifest says complete and every binarized file is present with its recorded size."""
    data = manifest(name, root)
    if not data or data.get("complete") is not True:
        return False
    rec = data.get("steps", {}).get("binarize")
    if not rec or not rec.get("outputs"):
        return False
    base = Path(root) / name
    for rel, entry in rec["outputs"].items():
        p = base / rel
        if not p.is_file() or p.stat().st_size != entry.get("bytes"):
            return False
    return True


def verify(name: str, root: Path | str = Path("data")) -> list[str]:
    """Re-hash every output recorded in the manifest; returns one line per problem (empty: all good)."""
    data = manifest(name, root)
    base = Path(root) / name
    if data is None:
        return [f"{base / 'manifest.json'}: missing or unreadable"]
    problems = [] if data.get("complete") else [f"{base}: prep not complete"]
    for step, rec in data.get("steps", {}).items():
        for rel, entry in rec.get("outputs", {}).items():
            p = base / rel
            if not p.is_file():
                problems.append(f"{p}: missing (step {step})")
            elif digest(p).sha256 != entry["sha256"]:
                problems.append(f"{p}: sha256 differs from the manifest (step {step})")
    return problems


def cache_dir(root: Path | str) -> Path:
    env = os.environ.get("SMX_DATA_CACHE")
    return Path(env) if env else Path(root) / ".cache"


def prepare(name: str, root: Path | str = Path("data"), source: str | Path | None = None,
            bpe_merges: int | None = None, workers: int = 1, progress: bool = True, *,
            options: dict | None = None, force: bool = False) -> Path:
    """Prepare dataset `name` into root/name (resumable, idempotent) and return that directory.

    A finished dataset is never replaced by one prepared with other settings unless `force` (UserError naming the
    settings that differ and the runs recorded as trained on it: smx.run.dataid)."""
    spec = get(name)
    if bpe_merges is not None and (isinstance(bpe_merges, bool) or not isinstance(bpe_merges, int)
                                   or bpe_merges < 0):
        raise UserError(f"--bpe-merges: expected an integer >= 0, got {bpe_merges!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserError(f"--workers: expected an integer >= 1, got {workers!r}")
    config = spec.make_config(options)
    if source is not None and not spec.takes_source:
        raise UserError(f"--source: {name} is generated and takes no source")
    src = parse_source(source)
    merges = spec.default_bpe_merges if bpe_merges is None else bpe_merges
    root_dir = Path(root) / name
    created = [p for p in (_topmost_missing(root_dir), _topmost_missing(cache_dir(root))) if p is not None]
    local = (src is None and not spec.takes_source) or (src is not None and not src.is_url)
    _check_replacement(spec, root_dir, merges, config, src, force)
    root_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _prepare_in(spec, root_dir, root, src, config, merges, workers, progress)
    except UserError:
        if local:  # nothing was downloaded: remove what this call created (unpacked local files included)
            for path in created:
                shutil.rmtree(path, ignore_errors=True)
        raise


_COMPARED = ("bpe_merges", "options", "text", "clean_train", "bpe_glossaries")  # manifest settings that shape the data


def replaced_settings(spec, root_dir: Path, merges: int, config, src) -> list[str]:
    """`key old -> new` for each setting in which this prep differs from the finished one in root_dir ([]: none,
    or no finished prep there). The source does not count: a finished prep's raw files are never read again from
    another --source (the manifest keeps the one they came from)."""
    man = _manifest.read(root_dir)
    if not man or man.get("complete") is not True:
        return []
    old = man.get("settings") if isinstance(man.get("settings"), dict) else {}
    new = json.loads(json.dumps(_header(spec, merges, config, src)["settings"]))
    return [f"{k} {json.dumps(old.get(k))[:60]} -> {json.dumps(new.get(k))[:60]}" for k in _COMPARED
            if old.get(k) != new.get(k)]


def _check_replacement(spec, root_dir: Path, merges: int, config, src, force: bool) -> None:
    changes = replaced_settings(spec, root_dir, merges, config, src)
    if not changes:
        return
    data_id = _identity.prepared_id(root_dir / "bin")
    runs = _identity.users(root_dir, data_id) if data_id else []
    used = (f"the {len(runs)} run(s) trained on it ({', '.join(map(str, runs[:3]))}"
            f"{', ...' if len(runs) > 3 else ''}) could then no longer be evaluated or resumed") if runs else \
        "no run is recorded as trained on it"
    if not force:
        raise UserError(f"{root_dir} is already prepared with other settings ({'; '.join(changes)}); {used}: pass "
                        "--force to replace it, or prepare it under another root with --out DIR")
    print(f"warning: replacing {root_dir} ({'; '.join(changes)}); {used}", file=sys.stderr)


def _topmost_missing(path: Path) -> Path | None:
    """The highest ancestor of `path` (or `path` itself) that does not exist yet, or None when it exists."""
    path = Path(os.path.abspath(path))
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def _prepare_in(spec, root_dir: Path, root, src, config, merges: int, workers: int, progress: bool) -> Path:
    name = spec.info.name
    with locked(root_dir), Reporter(progress) as reporter:
        man = _manifest.Manifest.load(root_dir)
        before = man.snapshot()
        prep = Prep(name, root_dir, man, reporter, workers, cache_dir(root))
        spec.build_raw(prep, src, config)
        raw_ran = bool(prep.ran)  # the source was read (else the raw files come from the recorded source)
        pipeline.run(prep, spec, merges)
        pipeline.drop_stale(prep, set(prep.planned))
        header = _header(spec, merges, config, src)
        recorded = before.get("settings", {}).get("source") if isinstance(before.get("settings"), dict) else None
        if not raw_ran and recorded is not None:
            header["settings"]["source"] = recorded
        man.data.update(header)
        man.data["summary"] = pipeline.summary(prep, spec)
        man.data["complete"] = True
        if man.data != before or not man.path.exists():
            man.save()
        reporter.note(f"{name}: {'prepared' if prep.ran else 'already prepared'} in {root_dir}")
    return root_dir


def _header(spec, merges: int, config, src) -> dict:
    info_ = spec.info
    text = {f"{split}.{lang}": spec.text(split, lang).as_json() for split in SPLITS for lang in info_.langs}
    return {
        "name": info_.name, "task": info_.task, "src_lang": info_.src_lang, "tgt_lang": info_.tgt_lang,
        "description": info_.description,
        "settings": {
            "bpe_merges": merges,
            "options": asdict(config) if config is not None else {},
            "source": src.value if src else None,
            "text": text,
            "clean_train": asdict(spec.clean) if spec.clean and info_.tgt_lang else None,
            "bpe_glossaries": list(spec.bpe_glossaries),
            "versions": {"python": platform.python_version(), "sacremoses": version("sacremoses"),
                         "subword-nmt": version("subword-nmt")},
        },
    }
