"""Binarization for fairseq: `python -m fairseq_cli.preprocess` in a subprocess (smx never imports fairseq here).

Translation: --source-lang S --target-lang T --joined-dictionary -> {split}.S-T.{S,T}.{bin,idx}, dict.S.txt, dict.T.txt
Language modeling: --only-source -> {split}.{bin,idx}, dict.txt
fairseq's own preprocess.log (it names the temporary directory) is moved out of bin/ into logs/.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from smx.engine.children import run_child
from smx.errors import UserError

from data_prep.steps.progress import Reporter

SPLITS = ("train", "valid", "test")


def _fairseq_version() -> str:
    for dist in ("fairseq-fixed", "fairseq"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return "fairseq (not installed)"


def settings(src: str, tgt: str | None) -> dict:
    return {"tool": _fairseq_version(), "joined_dictionary": tgt is not None, "only_source": tgt is None,
            "source_lang": src, "target_lang": tgt, "dataset_impl": "mmap"}


def command(bpe_dir: Path, dest: Path, src: str, tgt: str | None, workers: int) -> list[str]:
    """The exact fairseq-preprocess argv."""
    cmd = [sys.executable, "-m", "fairseq_cli.preprocess", "--destdir", str(dest), "--workers", str(workers),
           "--dataset-impl", "mmap"]
    if tgt is None:
        cmd += ["--only-source"]
        cmd += [arg for split in SPLITS for arg in (f"--{split}pref", str(bpe_dir / f"{split}.{src}"))]
    else:
        cmd += ["--source-lang", src, "--target-lang", tgt, "--joined-dictionary"]
        cmd += [arg for split in SPLITS for arg in (f"--{split}pref", str(bpe_dir / split))]
    return cmd


def expected_files(src: str, tgt: str | None) -> list[str]:
    """The files fairseq-preprocess must have written (relative to the bin directory)."""
    if tgt is None:
        return ["dict.txt"] + [f"{s}.{ext}" for s in SPLITS for ext in ("bin", "idx")]
    pair = f"{src}-{tgt}"
    return [f"dict.{src}.txt", f"dict.{tgt}.txt"] + [
        f"{s}.{pair}.{lang}.{ext}" for s in SPLITS for lang in (src, tgt) for ext in ("bin", "idx")]


def cause(lines: list[str]) -> str:
    """The line of fairseq-preprocess's output that says why it failed: the last error line (not the Namespace
    dump of its arguments that it logs first), else the last line; cut to 300 characters."""
    errors = [ln.strip() for ln in lines if ("Error" in ln or "error:" in ln or "Exception" in ln)
              and not ln.lstrip().startswith(("Namespace(", "Traceback"))]
    plain = [ln.strip() for ln in lines if "Namespace(" not in ln]
    line = errors[-1] if errors else (plain[-1] if plain else "")
    return line if len(line) <= 300 else line[:297] + "..."


def run(bpe_dir: Path, dest: Path, src: str, tgt: str | None, workers: int, log_path: Path,
        reporter: Reporter) -> None:
    """Binarize bpe_dir/{split}.{lang} into dest (a fresh directory); output and fairseq's log go to log_path."""
    if importlib.util.find_spec("fairseq_cli") is None:
        raise UserError("fairseq is not installed (pip install 'smx[engine]'); it is needed to binarize")
    dest.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = command(bpe_dir, dest, src, tgt, workers)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "w", encoding="utf-8") as log, reporter.task("binarize (fairseq-preprocess)", None):
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        returncode = run_child(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    own_log = dest / "preprocess.log"
    if own_log.exists():
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(own_log.read_text(encoding="utf-8", errors="replace"))
        own_log.unlink()
    if returncode != 0:
        lines = [ln for ln in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        raise UserError(f"fairseq-preprocess failed (exit {returncode}); see {log_path}: {cause(lines)}")
    missing = [f for f in expected_files(src, tgt) if not (dest / f).is_file()]
    if missing:
        raise UserError(f"fairseq-preprocess did not write {', '.join(missing)} in {dest}; see {log_path}")
