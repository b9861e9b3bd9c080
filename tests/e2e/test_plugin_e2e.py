"""End to end through the fairseq engine (subprocesses, --cpu): preprocess, train, resume, generate, LM."""

from __future__ import annotations

import pytest

import plugin_helpers as h
from smx.engine.contract import EVAL_ARGS

pytestmark = pytest.mark.slow

TRAIN = ["--cpu", "--optimizer", "adam", "--lr", "0.005", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "10",
         "--max-tokens", "400", "--log-format", "json", "--log-interval", "5", "--no-epoch-checkpoints",
         "--seed", "1", "--num-workers", "0", "--user-dir", h.USER_DIR]


def _train(argv: list[str]) -> list[dict]:
    proc = h.run_engine("fairseq_cli.train", argv)
    return h.json_lines(proc.stdout + proc.stderr), proc.stdout + proc.stderr


def _inner(records: list[dict]) -> list[dict]:
    """train_inner records (they carry an "update" key and no train_/valid_ prefix)."""
    return [r for r in records if "update" in r and "loss" in r]


@pytest.mark.parametrize("estimator", ["topk", "sparsemixer"])
def test_translation_train_resume_generate(mt_bin, tmp_path, estimator):
    save = tmp_path / "ckpt"
    argv = h.mt_argv(mt_bin, *TRAIN, "--save-dir", str(save), "--share-all-embeddings", "--label-smoothing", "0.1",
                     "--moe-num-experts", "4", "--moe-k", "1", "--moe-estimator", estimator,
                     "--moe-balance-weight", "0.01", "--moe-zloss-weight", "0.001")
    records, _ = _train([*argv, "--max-update", "40"])
    inner = _inner(records)
    assert len(inner) == 8  # one line per 5 updates
    first, last = inner[0], inner[-1]
    for key in ("moe_balance", "moe_zloss", "moe_dropped", "moe_entropy", "moe_unused", "moe_objective"):
        assert key in last, key
    loads = [float(last[f"moe_load_{layer}_e{i}"]) for layer in ("enc0", "dec0") for i in range(4)]
    assert sum(loads) == pytest.approx(2.0, abs=2e-3)  # each layer's fractions sum to 1 (4-digit rounding)
    assert float(last["moe_dropped"]) == 0.0  # dropless by default
    assert float(last["loss"]) < float(first["loss"]) - 0.2
    assert float(last["moe_objective"]) >= float(last["loss"])
    valid = [r for r in records if "valid_loss" in r]
    assert valid and "valid_moe_load_enc0_e0" in valid[-1]
    assert (save / "checkpoint_last.pt").is_file()

    # resume: picks up checkpoint_last.pt at update 40 and continues to 50
    records, log = _train([*argv, "--max-update", "50"])
    assert "Loaded checkpoint" in log and "@ 40 updates" in log
    inner = _inner(records)
    assert [int(r["num_updates"]) for r in inner] == [45, 50]

    # generation: one hypothesis per test sentence (13, not a multiple of the batch size) with EVAL_ARGS
    hyps = h.generate(mt_bin, save / "checkpoint_last.pt")
    assert sorted(int(line.split("\t")[0][2:]) for line in hyps) == list(range(13))
    if estimator == "topk":  # the quirk EVAL_ARGS exists for: without it, the last partial batch is dropped
        assert len(h.generate(mt_bin, save / "checkpoint_last.pt", eval_args=False)) < 13


def test_lm_top2_sparsemixer_v2_trains_and_evaluates(lm_bin, tmp_path):
    save = tmp_path / "ckpt"
    argv = h.lm_argv(lm_bin, *TRAIN, "--save-dir", str(save), "--sample-break-mode", "none", "--max-tokens", "256",
                     "--moe-num-experts", "4", "--moe-k", "2", "--moe-estimator", "sparsemixer_v2",
                     "--moe-estimator-options", '{"jitter_eps": 0.01}', "--moe-balance-weight", "0.01",
                     "--max-update", "20")
    records, _ = _train(argv)
    inner = _inner(records)
    assert len(inner) == 4
    assert float(inner[-1]["loss"]) < float(inner[0]["loss"])
    assert sum(float(inner[-1][f"moe_load_dec0_e{i}"]) for i in range(4)) == pytest.approx(1.0, abs=2e-3)
    proc = h.run_engine("fairseq_cli.eval_lm", [
        str(lm_bin), "--path", str(save / "checkpoint_last.pt"), "--user-dir", h.USER_DIR, "--cpu",
        "--gen-subset", "test", "--tokens-per-sample", "32", "--max-tokens", "256", *EVAL_ARGS])
    assert "Loss (base 2)" in proc.stdout + proc.stderr
