"""`smx data prep|ls|show|verify` through smx.cli.run, including the LM pipeline on synthetic-lm."""

from __future__ import annotations

import pytest
from dp_helpers import fairseq_counts

import data_prep
from smx.cli import run


def test_cli_prep_synthetic_lm_then_ls_show_verify(tmp_path, capsys):
    argv = ["data", "prep", "synthetic-lm", "--out", str(tmp_path), "--no-progress", "--bpe-merges", "20",
            "--opt", "train=200", "--opt", "valid=30", "--opt", "test=20", "--workers", "2"]
    assert run(argv) == 0
    out = capsys.readouterr().out
    assert "synthetic-lm: sizes" in out and "step timings" in out and "binarize" in out
    bin_dir = data_prep.bin_dir("synthetic-lm", tmp_path)
    assert sorted(p.name for p in bin_dir.iterdir()) == sorted(
        ["dict.txt"] + [f"{s}.{e}" for s in ("train", "valid", "test") for e in ("bin", "idx")])
    assert fairseq_counts(bin_dir, "txt", None) == {"train": 200, "valid": 30, "test": 20}
    assert (tmp_path / "synthetic-lm" / "tok" / "valid.txt").is_file()

    assert run(["data", "ls", "--root", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if "synthetic-lm" in line)
    assert "yes" in row and "200/30/20" in row
    assert "wmt14-en-de" in table and "ding-de-en" in table

    assert run(["data", "show", "synthetic-lm", "--root", str(tmp_path)]) == 0
    assert "fairseq vocabulary" in capsys.readouterr().out
    assert run(["data", "verify", "synthetic-lm", "--root", str(tmp_path)]) == 0
    (tmp_path / "synthetic-lm" / "tok" / "train.txt").write_text("changed\n")
    assert run(["data", "verify", "synthetic-lm", "--root", str(tmp_path)]) == 1
    assert "tok/train.txt: sha256 differs" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["data", "prep", "nope"], "error: unknown dataset 'nope'; choices: wmt14-en-de"),
        (["data", "prep", "synthetic-mt", "--opt", "size=3"], "unknown option 'size' for synthetic-mt"),
        (["data", "prep", "synthetic-mt", "--opt", "train"], "--opt: expected KEY=VALUE"),
        (["data", "prep", "synthetic-mt", "--opt", "train=x"], "option train: expected int, got 'x'"),
        (["data", "prep", "synthetic-mt", "--opt", "train=0"], "option train: must be >= 1"),
        (["data", "prep", "synthetic-mt", "--workers", "0"], "--workers: expected an integer >= 1"),
        (["data", "prep", "synthetic-mt", "--bpe-merges", "-1"], "--bpe-merges: expected an integer >= 0"),
        (["data", "prep", "ding-de-en", "--source", "/no/such/dir"], "--source: no such file or directory"),
        (["data", "prep", "shakespeare", "--opt", "a=1"], "dataset shakespeare takes no options"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "data"
    assert run(argv + ["--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_cli_show_unprepared_is_an_error(tmp_path, capsys):
    assert run(["data", "show", "ding-de-en", "--root", str(tmp_path)]) == 2
    assert "is not prepared; run `smx data prep ding-de-en`" in capsys.readouterr().err
