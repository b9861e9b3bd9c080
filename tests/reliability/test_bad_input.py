"""The bad-input matrix: recipes, data prep and the CLI.

Every case: exit code 2, exactly one line on stderr, `error: ...` naming the cause (the key, file or value), no
traceback, and nothing created or changed on disk: the test directory (recipes, sources, fake runs, the current
directory) and the data directory the recipes point at are snapshotted before and after (every path below them;
files: size, mtime, sha256; directories: mtime) and must be identical.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Callable

import pytest
import yaml
from rel_helpers import TINY, TINY_LM, diff_states, fake_run, multi30k_source, tree_state, write_gz

from smx.cli import run as cli

Setup = Callable[[Path, Path], list[str]]  # (test dir, data root) -> smx argv


def recipe_file(tmp: Path, data_root: Path, change: Callable[[dict], None] | None = None,
                text: str | bytes | None = None, base: Path = TINY) -> str:
    """A recipe file in tmp/recipes: tiny.yaml with data.root = data_root, changed by `change`, or raw `text`."""
    path = tmp / "recipes" / "r.yaml"
    path.parent.mkdir(exist_ok=True)
    if text is None:
        doc = yaml.safe_load(base.read_text())
        doc["data"]["root"] = str(data_root)
        if change is not None:
            change(doc)
        text = yaml.safe_dump(doc, sort_keys=False)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


def train_case(change=None, text=None, extra=(), base=TINY) -> Setup:
    return lambda tmp, data: ["train", recipe_file(tmp, data, change, text, base), "--runs-root", str(tmp / "runs"),
                              "--no-progress", *extra]


def set_key(path: str, value) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        node = doc
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return change


def drop_key(key: str) -> Callable[[dict], None]:
    return lambda doc: doc.pop(key)


def tiny_text(data: Path) -> str:
    """tiny.yaml as written (comments kept), with data.root = data."""
    old = "data:\n  dataset: synthetic-mt\n"
    return TINY.read_text().replace(old, f"{old}  root: {data}\n")


# ---------------------------------------------------------------------------------------------------- recipes
RECIPE_CASES: dict[str, tuple[Setup, str]] = {
    "yaml-syntax": (lambda t, d: train_case(text="name: tiny\ntask: [translation\n")(t, d), "YAML syntax error: line"),
    "duplicate-key": (lambda t, d: train_case(text=tiny_text(d).replace("  k: 1\n", "  k: 1\n  k: 1\n"))(t, d),
                      "moe.k: duplicate key (line"),
    "unknown-top-key": (train_case(lambda doc: doc.update(modle={"arch": "tiny"})),
                        "modle: unknown key; did you mean 'model'?"),
    "unknown-nested-key": (train_case(set_key("moe.experts", 4)), "moe.experts: unknown key"),
    "wrong-type-int": (train_case(set_key("moe.k", "two")), "moe.k: expected an integer, got str 'two'"),
    "wrong-type-bool": (train_case(set_key("train.max_update", True)), "train.max_update: expected an integer"),
    "wrong-type-section": (train_case(set_key("optim", 3)), "optim: expected a mapping of keys, got int 3"),
    "wrong-type-list": (train_case(set_key("moe.encoder_layers", "0,2")), "moe.encoder_layers: expected a list"),
    "k-greater-than-experts": (train_case(set_key("moe.k", 5)), "moe.k: 5 > moe.num_experts=4"),
    "negative-lr": (train_case(set_key("optim.lr", -0.1)), "optim.lr: -0.1 must be > 0"),
    "dropout-out-of-range": (train_case(set_key("model.dropout", 1.5)), "model.dropout: 1.5 must be in [0, 1)"),
    "capacity-zero": (train_case(set_key("moe.capacity_factor", 0)), "moe.capacity_factor: 0.0 must be > 0"),
    "moe-layer-missing": (train_case(set_key("moe.encoder_layers", [5])), "moe.encoder_layers: layer 5 does not exist"),
    "never-stops": (train_case(set_key("train.max_update", 0)), "train.max_update: set train.max_update, train.max_epoch or"),
    "warmup-above-lr": (train_case(set_key("optim.warmup_init_lr", 1.0)), "optim.warmup_init_lr: 1.0 > optim.lr"),
    "bad-run-name": (train_case(set_key("name", "a/b")), "name: 'a/b' must be ASCII letters, digits"),
    "non-ascii-run-name": (train_case(set_key("name", "tïny")), "name: 'tïny' must be ASCII letters, digits"),
    "unknown-estimator": (train_case(set_key("router.estimator", "sparsemixr")),
                          "router.estimator: unknown estimator 'sparsemixr'; did you mean 'sparsemixer'?"),
    "unknown-estimator-option": (train_case(set_key("router.options", {"tau": 2})),
                                 "router.options.tau: unknown option for estimator 'sparsemixer'"),
    "bad-estimator-option-value": (train_case(set_key("router.options", {"jitter_eps": "big"})),
                                   "router.options: jitter_eps"),
    "constant-gate-k1": (train_case(set_key("router", {"estimator": "topk", "options": {"normalize": True}})),
                         "makes the gate constant 1"),
    "missing-task": (train_case(drop_key("task")), "task: missing (required)"),
    "top-level-list": (train_case(text="- name\n- task\n"), "top level: expected a mapping"),
    "recipe-not-found": (lambda t, d: ["train", str(t / "nope.yaml")], "nope.yaml: recipe file not found"),
    "recipe-not-utf8": (lambda t, d: train_case(text=b"name: \xff\xfe\n")(t, d), "cannot read recipe"),
    "unknown-dataset": (train_case(set_key("data.dataset", "wmt99")), "data.dataset: unknown dataset 'wmt99'"),
    "dataset-of-wrong-task": (train_case(set_key("data.dataset", "synthetic-lm")),
                              "data.dataset: synthetic-lm is a language_modeling dataset but task is translation"),
    "language-not-in-dataset": (train_case(set_key("data.source_lang", "fr")),
                                "data.source_lang: 'fr' is not a language of synthetic-mt"),
    "lm-with-encoder-layers": (train_case(set_key("moe.encoder_layers", [0]), base=TINY_LM),
                               "moe.encoder_layers: not used by task language_modeling"),
    "missing-data-dir": (train_case(set_key("data.dir", "/nonexistent/bin")), "data.dir: /nonexistent/bin is not a"),
    "data-dir-of-wrong-task": (lambda t, d: train_case(set_key("data.dir", str(d / "synthetic-lm" / "bin")))(t, d),
                               "holds language-modeling data (dict.txt, train.idx), but task is translation"),
    "data-dir-lm-given-translation": (
        lambda t, d: train_case(set_key("data.dir", str(d / "synthetic-mt" / "bin")), base=TINY_LM)(t, d),
        "holds translation data (train.<src>-<tgt>.*), but task is language_modeling"),
    "data-dir-not-binarized": (lambda t, d: (t / "empty").mkdir() or train_case(set_key("data.dir", str(t / "empty")))(
        t, d), "holds no fairseq dictionary"),
    "fp16-on-cpu": (train_case(lambda doc: doc["train"].update(fp16=True, device="cpu")),
                    "train.fp16: true needs a GPU but train.device is cpu"),
    "bf16-and-fp16": (train_case(lambda doc: doc["train"].update(fp16=True, bf16=True)),
                      "train.bf16: true and train.fp16 true: choose one precision"),
    "bf16-with-loss-scale": (train_case(lambda doc: doc["train"].update(bf16=True, fp16_init_scale=4)),
                             "train.fp16_init_scale: is fp16's loss scaling; train.bf16 trains without a loss scaler"),
    "set-unknown-key": (train_case(extra=("--set", "moe.kk=2")), "--set moe.kk: unknown key; did you mean 'moe.k'?"),
    "set-without-value": (train_case(extra=("--set", "moe.k")), "--set moe.k: expected KEY=VALUE"),
    "set-bad-yaml": (train_case(extra=("--set", "moe.encoder_layers=[0")), "--set moe.encoder_layers=[0: YAML"),
    "negative-seed": (train_case(extra=("--seed", "-1")), "seed: -1 must be in 0..4294967295"),
    # issue 15 item 11: values that used to pass validation and then kill the engine after the run directory existed
    "lr-inf": (train_case(extra=("--set", "optim.lr=1e400")), "optim.lr: expected a finite number, got float inf"),
    "balance-nan": (train_case(extra=("--set", "moe.balance_weight=.nan")),
                    "moe.balance_weight: expected a finite number, got float nan"),
    "seed-too-large": (train_case(extra=("--seed", "4294967296")), "seed: 4294967296 must be in 0..4294967295"),
    "capacity-huge": (train_case(set_key("moe.capacity_factor", 1e308)),
                      "moe.capacity_factor: 1e+308 > moe.num_experts=4 drops nothing; use null"),
    "colon-in-data-root": (train_case(extra=("--set", "data.root=/tmp/a:b")),
                           "data.root: '/tmp/a:b' contains ':', which fairseq reads as a shard separator"),
    "lm-batch-below-block": (train_case(set_key("train.max_tokens", 8), base=TINY_LM),
                             "train.max_tokens: 8 < data.tokens_per_sample="),
    # item 13: bounded reads, no alias bombs
    "recipe-too-large": (lambda t, d: train_case(text=b"#" * ((1 << 20) + 1))(t, d), "larger than 1024 KiB"),
    "yaml-alias-bomb": (lambda t, d: train_case(text="a: &a [x, x]\nb: &b [*a, *a]\nc: &c [*b, *b]\n")(t, d),
                        "holds another alias; nested aliases are refused"),
    "estimator-flag-unknown": (train_case(extra=("--estimator", "nope")), "router.estimator: unknown estimator 'nope'"),
}


# -------------------------------------------------------------------------------------------------- data prep
def prep(name: str, *extra: str, source: Callable[[Path], Path] | None = None) -> Setup:
    """`smx data prep NAME --out TMP/out/data` (a directory that does not exist yet) [--source built by `source`]."""
    def setup(tmp: Path, data: Path) -> list[str]:
        args = ["data", "prep", name, "--out", str(tmp / "out" / "data"), "--no-progress", "--bpe-merges", "10", *extra]
        if source is not None:
            args += ["--source", str(source(tmp / "src"))]
        return args
    return setup


def m30k(edit: Callable[[Path], None] | None = None) -> Callable[[Path], Path]:
    def build(dest: Path) -> Path:
        multi30k_source(dest)
        if edit is not None:
            edit(dest)
        return dest
    return build


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DATA_CASES: dict[str, tuple[Setup, str]] = {
    "source-missing": (lambda t, d: ["data", "prep", "multi30k-en-de", "--source", str(t / "no-such-dir"), "--out",
                                     str(t / "out")], "--source: no such file or directory"),
    "source-file-missing": (prep("multi30k-en-de", source=m30k(lambda s: (s / "val.de.gz").unlink())),
                            "missing val.de.gz"),
    "source-empty": (prep("multi30k-en-de", source=m30k(lambda s: (write_gz(s / "val.en.gz", ""),
                                                                   write_gz(s / "val.de.gz", "")))),
                     "empty split:"),
    "source-truncated": (prep("multi30k-en-de", source=m30k(lambda s: truncate(s / "train.en.gz"))),
                         "corrupt gzip file"),
    "source-corrupt": (prep("multi30k-en-de", source=m30k(lambda s: (s / "test_2016_flickr.de.gz").write_bytes(
        b"\x1f\x8b\x08\x00garbage garbage garbage"))), "test_2016_flickr.de.gz"),
    "source-line-count-mismatch": (prep("multi30k-en-de", source=m30k(lambda s: write_gz(s / "val.de.gz", "one\n"))),
                                   "line-count mismatch in valid"),
    "source-not-a-directory": (prep("multi30k-en-de", source=lambda p: write_gz(p.with_suffix(".gz"), "x\n")),
                               "expected a directory holding"),
    "corrupt-deb": (prep("ding-de-en", source=lambda p: (p.mkdir(), (p / "trans-de_1.0_all.deb").write_bytes(
        b"this is not an ar archive"))[1] and p / "trans-de_1.0_all.deb"), "corrupt .deb"),
    "unknown-dataset": (prep("wmt99"), "unknown dataset 'wmt99'"),
    "generated-takes-no-source": (prep("synthetic-mt", source=lambda p: (p.mkdir(), p)[1]),
                                  "synthetic-mt is generated and takes no source"),
    "bad-option": (prep("synthetic-mt", "--opt", "train=0"), "option train: must be >= 1"),
    "negative-bpe-merges": (lambda t, d: ["data", "prep", "synthetic-mt", "--out", str(t / "out"), "--bpe-merges",
                                          "-1"], "--bpe-merges: expected an integer >= 0"),
}


# -------------------------------------------------------------------------------------------------------- CLI
def runs(tmp: Path, data: Path) -> dict[str, Path]:
    """Fake runs: translation (t), language model (lm), tampered checkpoint (bad), no SHA256SUMS (unsigned),
    no checkpoint (nockpt), and a directory that is not a run (notrun)."""
    root = tmp / "runs"
    out = {
        "t": fake_run(root / "t", TINY, [f"data.root={data}"]),
        "lm": fake_run(root / "lm", TINY_LM, [f"data.root={data}"]),
        "bad": fake_run(root / "bad", TINY, [f"data.root={data}"]),
        "unsigned": fake_run(root / "unsigned", TINY, [f"data.root={data}"], sums=False),
        "nockpt": fake_run(root / "nockpt", TINY, [f"data.root={data}"], checkpoints=()),
    }
    with open(out["bad"] / "checkpoints" / "checkpoint_last.pt", "ab") as f:
        f.write(b" tampered")
    with open(out["bad"] / "checkpoints" / "checkpoint_best.pt", "ab") as f:
        f.write(b" tampered")
    (root / "notrun").mkdir()
    (root / "notrun" / "notes.txt").write_text("hello")
    out["notrun"] = root / "notrun"
    return out


def cli_case(make: Callable[[dict[str, Path], Path], list[str]]) -> Setup:
    return lambda tmp, data: make(runs(tmp, data), tmp)


def a_file(tmp: Path) -> Path:
    """A plain file where a directory is expected."""
    (tmp / "afile").write_text("a file, not a directory")
    return tmp / "afile"


def locked(run: Path, pid: int, host: str) -> Path:
    (run / "run.lock").write_text(json.dumps({"pid": pid, "host": host, "since": "then"}))
    return run


CLI_CASES: dict[str, tuple[Setup, str]] = {
    "eval-missing-dir": (cli_case(lambda r, t: ["eval", "bleu", str(t / "runs" / "gone")]), "no such run directory"),
    "eval-not-a-run": (cli_case(lambda r, t: ["eval", "bleu", str(r["notrun"])]), "not a run directory (no recipe"),
    "eval-wrong-task": (cli_case(lambda r, t: ["eval", "ppl", str(r["t"])]),
                        "a translation run; perplexity needs a language_modeling run"),
    "eval-bleu-of-lm": (cli_case(lambda r, t: ["eval", "bleu", str(r["lm"])]), "BLEU needs a translation run"),
    "eval-no-checkpoint": (cli_case(lambda r, t: ["eval", "bleu", str(r["nockpt"])]),
                           "checkpoint_best.pt: no such checkpoint"),
    "eval-bad-checkpoint-spec": (cli_case(lambda r, t: ["eval", "bleu", str(r["t"]), "--checkpoint", "newest"]),
                                 "expected best, last or avg:N"),
    "eval-too-few-to-average": (cli_case(lambda r, t: ["eval", "bleu", str(r["t"]), "--checkpoint", "avg:3"]),
                                "need 3"),
    "eval-tampered-checkpoint": (cli_case(lambda r, t: ["eval", "bleu", str(r["bad"])]),
                                 "checkpoint_best.pt: sha256"),
    "eval-unrecorded-checkpoint": (cli_case(lambda r, t: ["eval", "bleu", str(r["unsigned"]), "--checkpoint", "last"]),
                                   "no recorded sha256"),
    "eval-lenpen-nan": (cli_case(lambda r, t: ["eval", "bleu", str(r["t"]), "--lenpen", "nan"]),
                        "--lenpen nan: must be a finite number"),
    "compare-different-tasks": (cli_case(lambda r, t: ["compare", str(r["t"]), str(r["lm"]), "--out",
                                                       str(t / "cmp")]), "cannot compare runs of different tasks"),
    "compare-missing-dir": (cli_case(lambda r, t: ["compare", str(t / "runs" / "gone"), "--out", str(t / "cmp")]),
                            "no such directory"),
    "compare-not-a-run": (cli_case(lambda r, t: ["compare", str(r["notrun"]), "--out", str(t / "cmp")]),
                          "neither a run directory nor a study directory"),
    "resume-missing": (cli_case(lambda r, t: ["train", "--resume", str(t / "runs" / "gone")]),
                       "no such run directory"),
    "resume-not-a-run": (cli_case(lambda r, t: ["train", "--resume", str(r["notrun"])]), "not a run directory"),
    "resume-no-checkpoint": (cli_case(lambda r, t: ["train", "--resume", str(r["nockpt"])]), "nothing to resume from"),
    "resume-set-unknown-key": (cli_case(lambda r, t: ["train", "--resume", str(r["t"]), "--set",
                                                      "train.max_updates=9"]),
                               "--set train.max_updates: unknown key; did you mean 'train.max_update'?"),
    "resume-changes-model": (cli_case(lambda r, t: ["train", "--resume", str(r["t"]), "--set", "moe.num_experts=8"]),
                             "cannot change moe.num_experts of an existing run"),
    "resume-tampered-checkpoint": (cli_case(lambda r, t: ["train", "--resume", str(r["bad"])]),
                                   "checkpoint_last.pt: sha256"),
    "resume-unrecorded-checkpoint": (cli_case(lambda r, t: ["train", "--resume", str(r["unsigned"])]),
                                     "no recorded sha256"),
    "resume-with-run-dir": (cli_case(lambda r, t: ["train", "--resume", str(r["t"]), "--run-dir", str(t / "x")]),
                            "drop --run-dir"),
    "resume-busy": (cli_case(lambda r, t: ["train", "--resume", str(locked(r["t"], os.getpid(),
                                                                             socket.gethostname()))]),
                    f"is in use by pid {os.getpid()}"),
    "resume-locked-elsewhere": (cli_case(lambda r, t: ["train", "--resume", str(locked(r["t"], 1, "elsewhere"))]),
                                "on host elsewhere"),
    "train-into-existing-run": (cli_case(lambda r, t: ["train", str(TINY), "--run-dir", str(r["t"])]),
                                "already exists; resume it with --resume"),
    "unknown-command": (lambda t, d: ["trian", str(TINY)], "No such command 'trian'"),
    # a file where a directory is expected, a name over the filesystem's limit: refused before any work
    "train-runs-root-is-file": (lambda t, d: ["train", str(TINY), "--runs-root", str(a_file(t)), "--no-progress"],
                                "afile is a file, not a directory"),
    "train-run-dir-under-file": (lambda t, d: ["train", str(TINY), "--run-dir", str(a_file(t) / "sub")],
                                 "afile is a file, not a directory"),
    "train-run-dir-name-too-long": (lambda t, d: ["train", str(TINY), "--run-dir", str(t / ("x" * 300))],
                                    "over the filesystem's limit of 255"),
    "prep-out-is-file": (lambda t, d: ["data", "prep", "synthetic-mt", "--out", str(a_file(t)), "--no-progress"],
                         "afile is a file, not a directory"),
    "compare-out-under-file": (cli_case(lambda r, t: ["compare", str(r["t"]), "--out", str(a_file(t) / "sub")]),
                               "afile is a file, not a directory"),
    "sweep-study-dir-under-file": (lambda t, d: ["sweep", str(TINY), "--estimators", "topk", "--study-dir",
                                                 str(a_file(t) / "sub")], "afile is a file, not a directory"),
    "diagnose-json-is-dir": (lambda t, d: ["diagnose", "gradients", "--json", str(t), "--force"],
                             "is a directory, expected a file"),
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """The file layout of prepared synthetic-mt (translation) and synthetic-lm (LM) data, without the contents: every
    case is refused before any data is read (shadows the conftest fixture, which really prepares the data)."""
    root = tmp_path_factory.mktemp("layout")
    mt, lm = root / "synthetic-mt" / "bin", root / "synthetic-lm" / "bin"
    for path in [mt / f"dict.{lang}.txt" for lang in ("src", "tgt")] + [lm / "dict.txt"]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("a 1\n")
    for split in ("train", "valid", "test"):
        for lang in ("src", "tgt"):
            for ext in ("bin", "idx"):
                (mt / f"{split}.src-tgt.{lang}.{ext}").write_bytes(b"")
        for ext in ("bin", "idx"):
            (lm / f"{split}.{ext}").write_bytes(b"")
    return root


ALL = {**{f"recipe/{k}": v for k, v in RECIPE_CASES.items()}, **{f"data/{k}": v for k, v in DATA_CASES.items()},
       **{f"cli/{k}": v for k, v in CLI_CASES.items()}}


def test_matrix_size():
    assert len(RECIPE_CASES) >= 30 and len(DATA_CASES) >= 8 and len(CLI_CASES) >= 15 and len(ALL) >= 40


@pytest.mark.parametrize("case", sorted(ALL))
def test_bad_input(case: str, tmp_path: Path, data_root: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SMX_DATA_CACHE", str(tmp_path / "cache"))  # would show up in the snapshot if written
    setup, message = ALL[case]
    argv = setup(tmp_path, data_root)
    capsys.readouterr()
    before = tree_state(tmp_path, data_root)
    code = cli(argv)
    err = capsys.readouterr().err
    after = tree_state(tmp_path, data_root)
    assert code == 2, (code, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert diff_states(before, after) == []
