"""Evaluation of a run directory: BLEU (tokenized and sacreBLEU) by beam search, perplexity for LM runs.

The engine runs in a subprocess (`python -m smx.engine.entry fairseq_cli.generate` / `fairseq_cli.eval_lm`); this
module never imports fairseq.

Scores (RUN/eval/bleu.json, RUN/eval/ppl.json) and the parsing of the engine's output: smx.eval.scoring.

Checkpoints are pickles (loading one runs code): every checkpoint file is checked against the sha256 smx recorded
when it saved it (checkpoints/SHA256SUMS) before anything is written or unpickled, and the engine checks it again
right before loading; a mismatch or a missing record is refused unless trust_checkpoint (--trust-checkpoint).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from smx.engine import contract
from smx.engine.process import engine_command, run_captured
from smx.errors import UserError
from smx.eval.average import model_checkpoint
from smx.recipe import recipes
from smx.run import dataid
from smx.run.dataid import translation_pair
from smx.eval.pinning import pinned
from smx.run.paths import RunDir, verify_checkpoint, write_atomic
from smx.run.writable import check_dir
from smx.eval.scoring import check_count, detokenize, idx_length, parse_eval_lm, parse_generate, read_lines, score_bleu


# ------------------------------------------------------------------------------------------------ run resolution
_RAW_REF_DIRS = ("raw", "detok", "orig", "text")  # where a raw (untokenized) reference may live, in this order


def checkpoint_files(run: Path, spec: str) -> list[Path]:
    """best | last -> [checkpoint_{best,last}.pt]; avg:N -> the N newest numbered checkpoints (UserError if absent).

    avg:N uses checkpoint_<epoch>_<update>.pt files when the run saved any (newest by update), else
    checkpoint<epoch>.pt (newest by epoch).
    """
    ck = run / "checkpoints"
    if spec in ("best", "last"):
        path = ck / f"checkpoint_{spec}.pt"
        if not path.is_file():
            raise UserError(f"{path}: no such checkpoint (has the run saved one yet?)")
        return [path]
    m = re.fullmatch(r"avg:(\d+)", spec)
    if not m or int(m.group(1)) < 1:
        raise UserError(f"--checkpoint {spec!r}: expected best, last or avg:N (N >= 1)")
    n = int(m.group(1))
    files = list(ck.glob("checkpoint*.pt")) if ck.is_dir() else []
    by_update = sorted((int(u), p) for p in files if (u := _match(r"checkpoint_\d+_(\d+)\.pt", p.name)))
    by_epoch = sorted((int(e), p) for p in files if (e := _match(r"checkpoint(\d+)\.pt", p.name)))
    chosen = [p for _, p in (by_update or by_epoch)][-n:]
    if len(chosen) < n:
        raise UserError(f"--checkpoint avg:{n}: {ck} holds {len(chosen)} numbered checkpoint(s) "
                        f"({', '.join(p.name for p in chosen) or 'none'}); need {n}")
    return chosen


def _match(pattern: str, name: str) -> str | None:
    m = re.fullmatch(pattern, name)
    return m.group(1) if m else None


def load_run_recipe(run: Path):
    """The run's resolved recipe (RUN/recipe.yaml); UserError when RUN is not a run directory."""
    if not run.is_dir():
        raise UserError(f"{run}: no such run directory")
    if not (run / "recipe.yaml").is_file():
        raise UserError(f"{run}: not a run directory (no recipe.yaml)")
    return recipes.load(run / "recipe.yaml")


def bin_dir_of(recipe, run: Path) -> Path:
    """The run's binarized data: data.dir or <data.root>/<dataset>/bin; a relative path is looked up from the
    current directory, then from each ancestor of the run directory (runs usually sit next to data/)."""
    d = Path(recipe.data.dir) if recipe.data.dir else Path(recipe.data.root) / recipe.data.dataset / "bin"
    for base in ([Path()] if d.is_absolute() else [Path(), *Path(run).resolve().parents]):
        if (base / d).is_dir():
            return base / d
    raise UserError(f"{d}: binarized data directory of the run's dataset not found (data.root / data.dir, looked up "
                    f"from here and the run's parent directories); prepare it: smx data prep {recipe.data.dataset}")


def run_data(recipe, run: Path) -> Path:
    """bin_dir_of(), refused (UserError naming both) when it is no longer the data the run was trained on."""
    d = bin_dir_of(recipe, run)
    dataid.check((RunDir(run).read_meta() or {}).get("data"), dataid.identity(d), f"smx eval {run}")
    return d


@dataclass(frozen=True)
class TextSettings:
    """How the dataset's target text was tokenized (from data/<name>/manifest.json), so detokenization mirrors it."""

    lang: str
    moses: bool = True
    escape: bool = True  # unknown: assume Moses' default (escaped), so the detokenizer unescapes


def text_settings(data_dir: Path, subset: str, tgt: str) -> TextSettings:
    try:
        text = json.loads((data_dir / "manifest.json").read_text())["settings"]["text"][f"{subset}.{tgt}"]
        return TextSettings(str(text.get("lang", tgt)), bool(text.get("moses", True)), bool(text.get("escape", True)))
    except (OSError, ValueError, KeyError, TypeError):
        return TextSettings(tgt)


def raw_reference(data_dir: Path, subset: str, tgt: str) -> Path | None:
    for sub in _RAW_REF_DIRS:
        if (p := data_dir / sub / f"{subset}.{tgt}").is_file():
            return p
    return None


# ------------------------------------------------------------------------------------------------------- engine
def engine_base(module: str, bin_dir: Path, checkpoint: Path, subset: str, max_tokens: int) -> list[str]:
    return engine_command(module, [str(bin_dir), "--path", str(checkpoint), "--user-dir", str(contract.user_dir()),
                                   "--gen-subset", subset, "--max-tokens", str(max_tokens), *contract.EVAL_ARGS])


def generate_argv(bin_dir: Path, checkpoint: Path, subset: str, src: str, tgt: str, beam: int, lenpen: float,
                  max_tokens: int) -> list[str]:
    return engine_base("fairseq_cli.generate", bin_dir, checkpoint, subset, max_tokens) + [
        "--task", "translation", "--source-lang", src, "--target-lang", tgt, "--beam", str(beam),
        "--lenpen", str(lenpen), "--nbest", "1", "--remove-bpe"]


def eval_lm_argv(bin_dir: Path, checkpoint: Path, subset: str, tokens_per_sample: int, sample_break_mode: str,
                 context_window: int, max_tokens: int) -> list[str]:
    return engine_base("fairseq_cli.eval_lm", bin_dir, checkpoint, subset, max_tokens) + [
        "--task", "language_modeling", "--tokens-per-sample", str(tokens_per_sample),
        "--sample-break-mode", sample_break_mode, "--context-window", str(context_window)]


SUBSETS = ("valid", "test")


def verify_checkpoints(files: list[Path], trust: bool = False) -> dict[Path, str]:
    """{file: sha256} after checking each against the run's SHA256SUMS (UserError unless `trust`)."""
    return {p: verify_checkpoint(p, trust) for p in files}


def _options(recipe, subset, max_tokens) -> tuple[str, int]:
    subset = subset or recipe.eval.subset
    if subset not in SUBSETS:
        raise UserError(f"--subset {subset!r}: expected one of {', '.join(SUBSETS)}")
    max_tokens = recipe.eval.max_tokens if max_tokens is None else max_tokens
    if max_tokens < 1:
        raise UserError(f"--max-tokens {max_tokens}: must be >= 1")
    return subset, max_tokens


def _write_result(eval_dir: Path, kind: str, result: dict) -> Path:
    """eval/<kind>.json (the latest result) and one file kept per setting: eval/<kind>.<subset>.<checkpoint>.json,
    with .beam<B>.lenpen<L> before .json for BLEU (so `--beam 1` does not overwrite the beam-4 result)."""
    text = json.dumps(result, indent=2) + "\n"
    parts = [kind, result["subset"], result["checkpoint"].replace(":", "")]
    if "beam" in result:
        parts += [f"beam{result['beam']}", f"lenpen{result['lenpen']}"]
    for path in (eval_dir / (".".join(parts) + ".json"), eval_dir / f"{kind}.json"):
        write_atomic(path, text)  # a full disk leaves the previous result whole
    return eval_dir / f"{kind}.json"


def bleu(run: Path, checkpoint: str = "best", subset: str | None = None, beam: int | None = None,
         lenpen: float | None = None, max_tokens: int | None = None, trust_checkpoint: bool = False) -> dict:
    """Beam search over every sentence of the subset, then tokenized BLEU and sacreBLEU into RUN/eval/bleu.json.

    Defaults come from the recipe's eval section (beam 4, lenpen 0.6, subset test). Every input is checked before
    anything is written.
    """
    run = Path(run)
    recipe = load_run_recipe(run)
    if recipe.task != "translation":
        raise UserError(f"{run}: a {recipe.task} run; BLEU needs a translation run (use `smx eval ppl`)")
    check_dir(run / "eval", "eval directory")  # before any work
    subset, max_tokens = _options(recipe, subset, max_tokens)
    beam = recipe.eval.beam if beam is None else beam
    lenpen = recipe.eval.lenpen if lenpen is None else lenpen
    if beam < 1:
        raise UserError(f"--beam {beam}: must be >= 1")
    if not math.isfinite(lenpen):
        raise UserError(f"--lenpen {lenpen}: must be a finite number")
    ckpts = checkpoint_files(run, checkpoint)
    verify_checkpoints(ckpts, trust_checkpoint)  # refused before anything is written
    bin_dir = run_data(recipe, run)
    src, tgt = translation_pair(bin_dir, subset, recipe)
    n = idx_length(bin_dir / f"{subset}.{src}-{tgt}.{src}.idx")
    refs_tok = read_lines(bin_dir.parent / "tok" / f"{subset}.{tgt}", "tokenized reference")
    ts = text_settings(bin_dir.parent, subset, tgt)
    raw_path = raw_reference(bin_dir.parent, subset, tgt)
    refs_raw = read_lines(raw_path, "raw reference") if raw_path else detokenize(refs_tok, ts.lang, ts.moses, ts.escape)
    for what, lines in (("tokenized reference", refs_tok), ("raw reference", refs_raw)):
        if len(lines) != n:
            raise UserError(f"{what} of {subset} has {len(lines)} lines but {bin_dir} holds {n} sentences")
    eval_dir = run / "eval"
    eval_dir.mkdir(exist_ok=True)
    start = time.time()
    with pinned(ckpts, eval_dir, trust_checkpoint) as (pins, digests), \
            model_checkpoint(checkpoint, pins, digests) as (ckpt, check_env):  # pins: the run may train on
        argv = generate_argv(bin_dir, ckpt, subset, src, tgt, beam, lenpen, max_tokens)
        text = run_captured(argv, eval_dir / f"{subset}.generate.log", f"beam search ({subset})", total=n,
                          extra_env=check_env)
    hyps_tok = check_count(parse_generate(text), n)
    hyps_detok = detokenize(hyps_tok, ts.lang, ts.moses, ts.escape)
    scores = score_bleu(hyps_tok, refs_tok, hyps_detok, refs_raw, compound=ts.lang == "de")
    for suffix, lines in (("hyp.tok", hyps_tok), ("hyp.detok", hyps_detok), ("ref.tok", refs_tok),
                          ("ref.raw", refs_raw)):
        (eval_dir / f"{subset}.{suffix}").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    result = {"run": str(run), "subset": subset, "checkpoint": checkpoint, "checkpoint_files": [str(p) for p in ckpts],
              "beam": beam, "lenpen": lenpen, "max_tokens": max_tokens, "src": src, "tgt": tgt, **scores,
              "bleu_tok_method": "sacrebleu tokenize=none smooth=none (= fairseq BLEU4) on Moses-tokenized, "
                                 "BPE-removed text; no compound splitting (bleu_tok_compound_split: get_ende_bleu's "
                                 "##AT## rule)",
              "ref_tok": str(bin_dir.parent / "tok" / f"{subset}.{tgt}"),
              "ref_raw": str(raw_path) if raw_path else "tokenized reference detokenized with sacremoses",
              "detokenizer": f"sacremoses MosesDetokenizer(lang={ts.lang}, unescape={ts.escape})" if ts.moses
              else "none (the dataset is not Moses-tokenized)",
              "seconds": round(time.time() - start, 2),
              "argv": [str(ckpts[0]) if a == str(pins[0]) else a for a in argv]}  # the run's file, not its pin
    result["path"] = str(_write_result(eval_dir, "bleu", result))
    return result


def ppl(run: Path, checkpoint: str = "best", subset: str | None = None, max_tokens: int | None = None,
        context_window: int = 0, trust_checkpoint: bool = False) -> dict:
    """Perplexity of an LM run on the subset (fairseq eval_lm) into RUN/eval/ppl.json: base-2 loss, ppl, tokens."""
    run = Path(run)
    recipe = load_run_recipe(run)
    if recipe.task != "language_modeling":
        raise UserError(f"{run}: a {recipe.task} run; perplexity needs a language_modeling run (use `smx eval bleu`)")
    check_dir(run / "eval", "eval directory")  # before any work
    subset, max_tokens = _options(recipe, subset, max_tokens)
    tps = recipe.data.tokens_per_sample
    if context_window < 0 or context_window >= tps:
        raise UserError(f"--context-window {context_window}: must be >= 0 and < data.tokens_per_sample ({tps})")
    max_tokens = max(max_tokens, tps)
    ckpts = checkpoint_files(run, checkpoint)
    verify_checkpoints(ckpts, trust_checkpoint)  # refused before anything is written
    bin_dir = run_data(recipe, run)
    idx_length(bin_dir / f"{subset}.idx")
    eval_dir = run / "eval"
    eval_dir.mkdir(exist_ok=True)
    start = time.time()
    with pinned(ckpts, eval_dir, trust_checkpoint) as (pins, digests), \
            model_checkpoint(checkpoint, pins, digests) as (ckpt, check_env):  # pins: the run may train on
        argv = eval_lm_argv(bin_dir, ckpt, subset, tps, recipe.data.sample_break_mode, context_window, max_tokens)
        text = run_captured(argv, eval_dir / f"{subset}.eval_lm.log", f"eval-lm ({subset})", extra_env=check_env)
    result = {"run": str(run), "subset": subset, "checkpoint": checkpoint, "checkpoint_files": [str(p) for p in ckpts],
              **parse_eval_lm(text), "loss_base": 2, "tokens_per_sample": tps, "context_window": context_window,
              "max_tokens": max_tokens, "seconds": round(time.time() - start, 2),
              "argv": [str(ckpts[0]) if a == str(pins[0]) else a for a in argv]}  # the run's file, not its pin
    result["path"] = str(_write_result(eval_dir, "ppl", result))
    return result
