"""Helpers for the fairseq plugin tests: tiny generated data, in-process model building, engine subprocesses."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import warnings
from pathlib import Path

from smx.engine.contract import EVAL_ARGS, engine_env, user_dir

USER_DIR = str(user_dir())
SRC_VOCAB = [f"s{i}" for i in range(16)]
TGT_VOCAB = [f"t{i}" for i in range(16)]
LM_VOCAB = [f"w{i}" for i in range(24)]


# ---------------------------------------------------------------- data


def _translate(words: list[str]) -> list[str]:
    """A deterministic 'language': target word of s_i is t_{(5 i + 3) mod 16}, same order."""
    return [TGT_VOCAB[(5 * int(w[1:]) + 3) % len(TGT_VOCAB)] for w in words]


def write_mt_text(raw: Path, sizes: dict[str, int], seed: int = 0) -> None:
    rng = random.Random(seed)
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        src = [[rng.choice(SRC_VOCAB) for _ in range(rng.randint(3, 9))] for _ in range(n)]
        (raw / f"{split}.src").write_text("".join(" ".join(s) + "\n" for s in src))
        (raw / f"{split}.tgt").write_text("".join(" ".join(_translate(s)) + "\n" for s in src))


def write_lm_text(raw: Path, sizes: dict[str, int], seed: int = 0) -> None:
    """Mostly w_i -> w_{i+1} chains: learnable in a few updates."""
    rng = random.Random(seed)
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        lines = []
        for _ in range(n):
            i = rng.randrange(len(LM_VOCAB))
            words = []
            for _ in range(rng.randint(5, 12)):
                words.append(LM_VOCAB[i])
                i = (i + 1) % len(LM_VOCAB) if rng.random() < 0.9 else rng.randrange(len(LM_VOCAB))
            lines.append(" ".join(words) + "\n")
        (raw / f"{split}.txt").write_text("".join(lines))


def write_dicts(root: Path) -> Path:
    """Dictionaries only (enough for fairseq's setup_task): translation dict.src/tgt.txt (joined) and LM dict.txt."""
    root.mkdir(parents=True, exist_ok=True)
    joined = "".join(f"{w} 1\n" for w in SRC_VOCAB + TGT_VOCAB)
    (root / "dict.src.txt").write_text(joined)
    (root / "dict.tgt.txt").write_text(joined)
    (root / "dict.txt").write_text("".join(f"{w} 1\n" for w in LM_VOCAB))
    return root


def binarize_mt(root: Path) -> Path:
    raw, out = root / "raw", root / "bin"
    write_mt_text(raw, {"train": 240, "valid": 24, "test": 13})
    run_engine("fairseq_cli.preprocess", [
        "--source-lang", "src", "--target-lang", "tgt", "--joined-dictionary",
        "--trainpref", str(raw / "train"), "--validpref", str(raw / "valid"), "--testpref", str(raw / "test"),
        "--destdir", str(out), "--workers", "1",
    ])
    return out


def binarize_lm(root: Path) -> Path:
    raw, out = root / "raw", root / "bin"
    write_lm_text(raw, {"train": 300, "valid": 60, "test": 60})
    run_engine("fairseq_cli.preprocess", [
        "--only-source", "--trainpref", str(raw / "train.txt"), "--validpref", str(raw / "valid.txt"),
        "--testpref", str(raw / "test.txt"), "--destdir", str(out), "--workers", "1",
    ])
    return out


# ---------------------------------------------------------------- engine


def run_engine(module: str, args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, **engine_env(), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def json_lines(text: str) -> list[dict]:
    """The --log-format json records of an engine log (fairseq prints one JSON object per log line)."""
    records = []
    for line in text.splitlines():
        start = line.find("{")
        if start < 0:
            continue
        try:
            obj = json.loads(line[start:])
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            records.append(obj)
    return records


def generate(data: Path, checkpoint: Path, extra: list[str] = (), eval_args: bool = True) -> list[str]:
    args = [str(data), "--path", str(checkpoint), "--user-dir", USER_DIR, "--task", "translation",
            "--source-lang", "src", "--target-lang", "tgt", "--gen-subset", "test", "--beam", "2",
            "--batch-size", "4", "--max-len-a", "1", "--max-len-b", "4", "--cpu", *extra]
    if eval_args:
        args += list(EVAL_ARGS)
    proc = run_engine("fairseq_cli.generate", args)
    return [line for line in proc.stdout.splitlines() if line.startswith("H-")]


# ---------------------------------------------------------------- in-process building


def parse(argv: list[str]):
    """fairseq's training parser on argv (plus --user-dir): (argparse namespace, omegaconf cfg)."""
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    with warnings.catch_warnings():  # hydra / torch.jit deprecation noise from fairseq
        warnings.simplefilter("ignore")
        parser = options.get_training_parser()
        args = options.parse_args_and_arch(parser, input_args=[*argv, "--user-dir", USER_DIR])
        return args, convert_namespace_to_omegaconf(args)


def build(argv: list[str]):
    """(task, model, criterion) built through fairseq's registries, exactly as fairseq_cli.train does."""
    from fairseq import tasks

    _, cfg = parse(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = tasks.setup_task(cfg.task)
        model = task.build_model(cfg.model)
        criterion = task.build_criterion(cfg.criterion)
    return task, model, criterion


def mt_argv(data, *extra: str) -> list[str]:
    return [str(data), "--task", "translation", "--source-lang", "src", "--target-lang", "tgt",
            "--arch", "smx_switch_transformer_tiny", "--criterion", "smx_moe_label_smoothed_cross_entropy",
            *extra]


def lm_argv(data, *extra: str) -> list[str]:
    return [str(data), "--task", "language_modeling", "--arch", "smx_switch_lm_tiny",
            "--criterion", "smx_moe_cross_entropy", "--tokens-per-sample", "32", *extra]


def mt_sample(task, pairs: list[tuple[str, str]]):
    """A fairseq translation batch (left-padded source, right-padded target) from (source, target) strings."""
    from fairseq.data import LanguagePairDataset

    d_src, d_tgt = task.source_dictionary, task.target_dictionary
    src = [d_src.encode_line(s, add_if_not_exist=False).long() for s, _ in pairs]
    tgt = [d_tgt.encode_line(t, add_if_not_exist=False).long() for _, t in pairs]
    ds = LanguagePairDataset(src, [len(s) for s in src], d_src, tgt, [len(t) for t in tgt], d_tgt)
    return ds.collater([ds[i] for i in range(len(pairs))])


def lm_sample(task, lines: list[str]):
    """A right-padded LM batch: input = line, target = line shifted by one (eos last)."""
    import torch

    d = task.source_dictionary
    seqs = [d.encode_line(line, add_if_not_exist=False).long() for line in lines]  # ends with eos
    inputs = [torch.cat([seq.new_tensor([d.eos()]), seq[:-1]]) for seq in seqs]
    width = max(len(s) for s in seqs)
    src = torch.full((len(seqs), width), d.pad(), dtype=torch.long)
    target = torch.full((len(seqs), width), d.pad(), dtype=torch.long)
    for i, (inp, seq) in enumerate(zip(inputs, seqs)):
        src[i, : len(inp)] = inp
        target[i, : len(seq)] = seq
    return {
        "id": torch.arange(len(seqs)),
        "net_input": {"src_tokens": src, "src_lengths": torch.tensor([len(s) for s in seqs])},
        "target": target,
        "ntokens": int(target.ne(d.pad()).sum()),
        "nsentences": len(seqs),
    }
