"""smx eval against a run directory, with the engine subprocess replaced by canned fairseq-generate output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import smx.eval.evaluate as ev
from smx.eval import average as checkpoint_average
from smx.cli import run as cli
from smx.eval.evaluate import checkpoint_files
from smx.eval.scoring import detokenize, score_bleu
from smx.run.paths import write_checksums

from eval_helpers import HYPS_TOK, REFS_RAW, REFS_TOK, generate_output


@pytest.fixture
def fake_engine(monkeypatch):
    calls = []

    def fake(argv, log, label, total=None, count_prefix="H-", order=(5, 2, 7, 0, 1, 3, 6, 4), extra_env=None):
        calls.append({"argv": argv, "total": total})
        log.write_text("fake engine\n")
        return generate_output(HYPS_TOK, [i for i in order if i < total])
    monkeypatch.setattr(ev, "run_captured", fake)
    return calls


def test_eval_bleu_writes_scores_and_files(fake_run, fake_engine, capsys):
    assert cli(["eval", "bleu", str(fake_run)]) == 0
    out = fake_run / "eval"
    r = json.loads((out / "bleu.json").read_text())
    expected = score_bleu(HYPS_TOK, REFS_TOK, detokenize(HYPS_TOK, "de"), REFS_RAW, compound=True)
    assert r["bleu_tok"] == expected["bleu_tok"] and r["sacrebleu"] == expected["sacrebleu"]
    assert r["sacrebleu_signature"] == expected["sacrebleu_signature"]
    assert (r["subset"], r["checkpoint"], r["beam"], r["lenpen"], r["n_sentences"]) == ("test", "best", 5, 1.0, 8)
    assert r["ref_raw"].endswith("raw/test.de")
    assert (out / "bleu.test.best.beam5.lenpen1.0.json").read_text() == (out / "bleu.json").read_text()
    # another setting is kept beside it, not over it
    assert cli(["eval", "bleu", str(fake_run), "--beam", "1", "--lenpen", "0.6"]) == 0
    assert json.loads((out / "bleu.test.best.beam5.lenpen1.0.json").read_text())["beam"] == 5
    assert json.loads((out / "bleu.test.best.beam1.lenpen0.6.json").read_text())["beam"] == 1
    assert (out / "test.hyp.tok").read_text(encoding="utf-8").splitlines() == HYPS_TOK  # reordered by id
    assert (out / "test.hyp.detok").read_text(encoding="utf-8").splitlines() == detokenize(HYPS_TOK, "de")
    assert (out / "test.ref.tok").read_text(encoding="utf-8").splitlines() == REFS_TOK
    assert (out / "test.ref.raw").read_text(encoding="utf-8").splitlines() == REFS_RAW
    first, second = fake_engine  # the default setting, then --beam 1 --lenpen 0.6
    call = first
    assert second["argv"][second["argv"].index("--beam") + 1] == "1"
    argv = call["argv"]
    assert call["total"] == 8 and argv[1:5] == ["-P", "-m", "smx.engine.entry", "fairseq_cli.generate"]
    pin = Path(argv[argv.index("--path") + 1])  # a hard link of the checked file (the run may still train)
    assert pin.parent.parent == fake_run / "eval" and pin.parent.name.startswith(".pinned-")
    assert pin.name.endswith("checkpoint_best.pt") and not pin.exists()  # removed after the evaluation
    shown = json.loads((out / "bleu.json").read_text())["argv"]  # the run's file is what bleu.json names
    assert shown[shown.index("--path") + 1] == str(fake_run / "checkpoints" / "checkpoint_best.pt")
    for flag, value in [("--beam", "5"), ("--lenpen", "1.0"), ("--gen-subset", "test"), ("--source-lang", "en"),
                        ("--target-lang", "de"), ("--required-batch-size-multiple", "1"), ("--max-tokens", "4096")]:
        assert argv[argv.index(flag) + 1] == value, flag
    assert "--remove-bpe" in argv and argv[argv.index("--user-dir") + 1].endswith("smx/fairseq_plugin")
    printed = capsys.readouterr().out
    assert f"{expected['bleu_tok']:.2f}" in printed and "sacreBLEU" in printed


def test_eval_bleu_options_override_recipe(fake_run, fake_engine):
    assert cli(["eval", "bleu", str(fake_run), "--subset", "valid", "--beam", "2", "--lenpen", "0.6",
                "--max-tokens", "100"]) == 0
    argv = fake_engine[0]["argv"]
    assert [argv[argv.index(f) + 1] for f in ("--gen-subset", "--beam", "--lenpen", "--max-tokens")] == [
        "valid", "2", "0.6", "100"]
    assert json.loads((fake_run / "eval" / "bleu.json").read_text())["subset"] == "valid"


def test_eval_bleu_missing_hypothesis_is_an_error(fake_run, monkeypatch, capsys):
    text = generate_output(HYPS_TOK, [0, 1, 2, 4, 5, 6, 7])
    monkeypatch.setattr(ev, "run_captured", lambda argv, log, label, total=None, **kw: text)
    assert cli(["eval", "bleu", str(fake_run)]) == 2
    assert "7 hypotheses for 8 source sentences; missing ids [3]" in capsys.readouterr().err
    assert not (fake_run / "eval" / "bleu.json").exists()


def test_eval_bleu_without_checkpoint_writes_nothing(fake_run, fake_engine, capsys):
    (fake_run / "checkpoints" / "checkpoint_best.pt").unlink()
    assert cli(["eval", "bleu", str(fake_run)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "checkpoint_best.pt: no such checkpoint" in err
    assert "Traceback" not in err and not (fake_run / "eval").exists() and not fake_engine


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "avg:0"], "expected best, last or avg:N"),
    (["--checkpoint", "newest"], "expected best, last or avg:N"),
    (["--checkpoint", "avg:3"], "holds 0 numbered checkpoint(s) (none); need 3"),
    (["--subset", "train"], "--subset 'train'"),
    (["--beam", "0"], "--beam 0"),
])
def test_eval_bleu_bad_options(fake_run, fake_engine, capsys, args, message):
    assert cli(["eval", "bleu", str(fake_run), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (fake_run / "eval").exists() and not fake_engine


def test_eval_bleu_refuses_lm_run_and_non_run(fake_run, tmp_path, capsys):
    assert cli(["eval", "bleu", str(tmp_path)]) == 2
    assert "not a run directory (no recipe.yaml)" in capsys.readouterr().err
    assert cli(["eval", "ppl", str(fake_run)]) == 2
    assert "perplexity needs a language_modeling run" in capsys.readouterr().err


def test_eval_bleu_reference_count_mismatch(fake_run, fake_engine, capsys):
    data = fake_run.parent.parent / "data" / "synthetic-mt"
    (data / "tok" / "test.de").write_text("only one line\n")
    assert cli(["eval", "bleu", str(fake_run)]) == 2
    assert "has 1 lines but" in capsys.readouterr().err and not fake_engine


def test_checkpoint_files_selection(tmp_path):
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    for name in ("checkpoint1.pt", "checkpoint2.pt", "checkpoint10.pt", "checkpoint_best.pt", "checkpoint_last.pt"):
        (ck / name).write_bytes(b"x")
    assert checkpoint_files(tmp_path, "last") == [ck / "checkpoint_last.pt"]
    assert checkpoint_files(tmp_path, "avg:2") == [ck / "checkpoint2.pt", ck / "checkpoint10.pt"]
    for name in ("checkpoint_1_100.pt", "checkpoint_1_1000.pt", "checkpoint_2_200.pt"):
        (ck / name).write_bytes(b"x")
    assert checkpoint_files(tmp_path, "avg:2") == [ck / "checkpoint_2_200.pt", ck / "checkpoint_1_1000.pt"]
    with pytest.raises(ValueError, match="holds 3 numbered"):
        checkpoint_files(tmp_path, "avg:4")


def test_average_checkpoints_subprocess(tmp_path):
    import torch

    paths = []
    for i, (w, steps) in enumerate([(1.0, 5), (2.0, 7), (6.0, 9)]):
        state = {"model": {"w": torch.full((2, 3), w), "h": torch.full((2,), w, dtype=torch.float16),
                           "n": torch.tensor(steps)}, "extra_state": {"i": i}}
        paths.append(tmp_path / f"c{i}.pt")
        torch.save(state, paths[-1])
    checkpoint_average.average_checkpoints(paths, tmp_path / "avg.pt")
    avg = torch.load(tmp_path / "avg.pt", weights_only=False)
    assert torch.equal(avg["model"]["w"], torch.full((2, 3), 3.0))
    assert avg["model"]["h"].dtype == torch.float16
    assert torch.equal(avg["model"]["h"], torch.full((2,), 3.0, dtype=torch.float16))
    assert int(avg["model"]["n"]) == 9 and avg["extra_state"] == {"i": 2}  # non-float and other state: the newest


def test_eval_ppl_lm_run(tmp_path, monkeypatch, capsys):
    import yaml

    from eval_helpers import write_idx

    write_idx(tmp_path / "data" / "synthetic-lm" / "bin" / "valid.idx", 4)
    run = tmp_path / "lm-run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint_last.pt").write_bytes(b"x")
    write_checksums(run / "checkpoints")
    (run / "recipe.yaml").write_text(yaml.safe_dump({
        "name": "lm", "task": "language_modeling", "data": {"dataset": "synthetic-lm", "root": str(tmp_path / "data"),
                                                            "tokens_per_sample": 64},
        "model": {"arch": "tiny"}, "moe": {"decoder_layers": [0]}, "train": {"max_update": 10}}))
    calls = []

    def fake(argv, log, label, total=None, extra_env=None):
        calls.append(argv)
        return ("x | INFO | fairseq_cli.eval_lm | Evaluated 1,024 tokens in 0.5s (2048.00 tokens/s)\n"
                "x | INFO | fairseq_cli.eval_lm | Loss (base 2): 3.0000, Perplexity: 8.00\n")
    monkeypatch.setattr(ev, "run_captured", fake)
    assert cli(["eval", "ppl", str(run), "--subset", "valid", "--checkpoint", "last", "--max-tokens", "16"]) == 0
    r = json.loads((run / "eval" / "ppl.json").read_text())
    assert (r["loss"], r["ppl"], r["tokens"], r["loss_base"], r["subset"]) == (3.0, 8.0, 1024, 2, "valid")
    argv = calls[0]
    assert argv[1:5] == ["-P", "-m", "smx.engine.entry", "fairseq_cli.eval_lm"]
    assert argv[argv.index("--tokens-per-sample") + 1] == "64"
    assert argv[argv.index("--max-tokens") + 1] == "64"  # raised to one block
    assert argv[argv.index("--required-batch-size-multiple") + 1] == "1"
    assert "ppl 8.00" in capsys.readouterr().out
    assert cli(["eval", "bleu", str(run)]) == 2
    assert "BLEU needs a translation run" in capsys.readouterr().err


def test_relative_data_root_found_from_run_ancestors(fake_run, fake_engine, tmp_path, monkeypatch):
    import yaml

    recipe = yaml.safe_load((fake_run / "recipe.yaml").read_text())
    recipe["data"]["root"] = "data"  # relative, as recipes/*.yaml write it; data/ sits next to runs/
    (fake_run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert cli(["eval", "bleu", str(fake_run)]) == 0
    argv = fake_engine[0]["argv"]
    assert Path(argv[5]).resolve() == (tmp_path / "data" / "synthetic-mt" / "bin").resolve()
