"""`smx compare` end to end on hand-built run directories: outputs, PNGs, refusals with exit 2."""

from __future__ import annotations

import json
import struct

import matplotlib.image
import pytest

from smx.cli import run

from compare_helpers import write_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_compare_study_writes_outputs(study, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    assert run(["compare", str(study)]) == 0
    out = study / "compare"
    printed = capsys.readouterr().out
    assert "sparsemixer" in printed and "topk" in printed and "1.67x [1.00, 3.00]" in printed
    for name in ("compare.md", "compare.json", "curves.png", "expert_load.png"):
        assert (out / name).stat().st_size > 0, name
    for name in ("curves.png", "expert_load.png"):
        w, h = _png_size(out / name)
        assert w > 100 and h > 100
        img = matplotlib.image.imread(out / name)
        assert img.shape[0] == h and img.shape[1] == w and img.std() > 0  # a real, non-blank image
    data = json.loads((out / "compare.json").read_text())
    assert data["target"] == 2.0 and data["baseline"] == "topk"
    sm = next(g for g in data["groups"] if g["estimator"] == "sparsemixer")
    assert sm["speedup"] == pytest.approx(5 / 3) and sm["speedup_ci"] == [1.0, 3.0]
    assert sm["updates_to_target"] == [20.0, 10.0]
    md = (out / "compare.md").read_text()
    assert "| sparsemixer | 1,2 |" in md and "1.67x [1.00, 3.00]" in md and "![curves](curves.png)" in md
    assert "| 21.00 ± 12.71 |" in md  # topk BLEU (tok): mean of 20 and 22, t(0.975, 1) * 1


def test_compare_table_is_not_folded_in_a_pipe(study, capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)  # stdout is captured: not a terminal
    assert run(["compare", str(study)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "sparsemixer" in line]
    assert rows and "1.67x [1.00, 3.00]" in rows[0]  # the whole row on one line, every cell unfolded


def test_compare_run_dirs_with_out_and_target(study, tmp_path, capsys):
    out = tmp_path / "report"
    runs = [str(study / n) for n in ("topk-s1", "topk-s2", "sm-s1", "sm-s2")]
    assert run(["compare", *runs, "--target", "1.5", "--interpolate", "--out", str(out)]) == 0
    data = json.loads((out / "compare.json").read_text())
    assert data["target"] == 1.5 and data["target_source"] == "--target" and data["interpolate"] is True
    topk = data["groups"][0]
    assert topk["updates_to_target"] == [None, 27.5] and topk["speedup"] is None


def test_compare_refuses_different_datasets(tmp_path, capsys):
    a = write_run(tmp_path, "a", "topk", 1, [(10, 2.0)], dataset="synthetic-mt")
    b = write_run(tmp_path, "b", "sparsemixer", 1, [(10, 2.0)], dataset="multi30k-en-de")
    assert run(["compare", str(a), str(b), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "different datasets" in err and "synthetic-mt" in err and "multi30k-en-de" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_compare_refuses_different_tasks(tmp_path, capsys):
    a = write_run(tmp_path, "a", "topk", 1, [(10, 2.0)], task="translation", dataset="d")
    b = write_run(tmp_path, "b", "topk", 2, [(10, 2.0)], task="language_modeling", dataset="d")
    assert run(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "different tasks" in err and "language_modeling" in err and "Traceback" not in err


@pytest.mark.parametrize("make", ["empty", "missing", "file", "no_metrics"])
def test_compare_non_run_directories(tmp_path, capsys, make):
    target = tmp_path / "x"
    if make == "empty":
        target.mkdir()
        (target / "sub").mkdir()
    elif make == "file":
        target.write_text("hello")
    elif make == "no_metrics":
        target.mkdir()
        (target / "meta.json").write_text(json.dumps({"name": "x"}))
    assert run(["compare", str(target), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(target) in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_compare_unknown_baseline(study, capsys):
    assert run(["compare", str(study), "--baseline", "nope"]) == 2
    assert "--baseline 'nope'" in capsys.readouterr().err


def test_compare_refuses_to_pool_protocols(tmp_path, capsys):
    a = write_run(tmp_path, "a", "topk", 1, [(10, 2.0)], protocol="reference")
    b = write_run(tmp_path, "b", "sparsemixer", 1, [(10, 2.0)])  # no protocol recorded: controlled
    assert run(["compare", str(a), str(b), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "different protocols" in err and "reference" in err and "controlled" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_compare_states_the_protocol_and_every_setting_that_differs(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    ref = {"router_bias": True, "balance_reduction": "batch_sum", "k": 1}
    for seed in (1, 2):
        write_run(tmp_path / "s", f"topk-{seed}", "topk", seed, [(10, 2.0), (20, 1.5)], protocol="reference",
                  moe={**ref, "output_scale": False})
        write_run(tmp_path / "s", f"sm-{seed}", "sparsemixer", seed, [(10, 2.0), (20, 1.4)], protocol="reference",
                  moe={**ref, "output_scale": True, "balance_source": "reference"})
    assert run(["compare", str(tmp_path / "s")]) == 0
    printed = capsys.readouterr().out
    assert "Protocol: reference" in printed and "differs: moe.output_scale: topk false; sparsemixer true" in printed
    data = json.loads((tmp_path / "s" / "compare" / "compare.json").read_text())
    assert data["protocol"] == "reference"
    assert data["differences"] == {"moe.output_scale": {"topk": [False], "sparsemixer": [True]},
                                   "moe.balance_source": {"topk": [None], "sparsemixer": ["reference"]}}
    md = (tmp_path / "s" / "compare" / "compare.md").read_text()
    assert "Protocol: **reference**" in md and "| moe.output_scale | false | true |" in md
    assert "| moe.balance_source | null | \"reference\" |" in md


def test_controlled_compare_says_only_the_estimator_differs(study, capsys):
    assert run(["compare", str(study)]) == 0
    md = (study / "compare" / "compare.md").read_text()
    assert "Protocol: **controlled** (every setting but the estimator identical across arms)." in md
    assert "Settings that differ between the arms: none besides the estimator." in md


def test_compare_survives_malformed_metrics_lines(tmp_path, capsys):
    root = tmp_path / "s"
    for est in ("topk", "sparsemixer"):
        path = write_run(root, f"{est}-s1", est, 1, [(10, 3.0), (20, 2.0)])
        with open(path / "metrics.jsonl", "ab") as f:
            f.write(b'{"step": "x", "split": "valid", "loss": 0.1}\n{"step": 30, "split": "valid", "loss": \xff}\n')
    assert run(["compare", str(root), "--out", str(tmp_path / "c")]) == 0
    doc = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert [g["best"]["mean"] for g in doc["groups"]] == [2.0, 2.0]


def test_compare_shows_routing_telemetry_when_logged(tmp_path, capsys):
    for est, seed, tel in (("topk", 1, (1.5, 0.0, 2.0)), ("topk", 2, (2.5, 0.0, 4.0)),
                           ("sparsemixer", 1, (1.2, 0.3, 3.0))):
        write_run(tmp_path / "s", f"{est}-{seed}", est, seed, [(10, 2.0)],
                  load={"moe_imbalance": tel[0], "moe_nograd": tel[1], "moe_logit_rms": tel[2]})
    assert run(["compare", str(tmp_path / "s"), "--out", str(tmp_path / "c")]) == 0
    md = (tmp_path / "c" / "compare.md").read_text()
    assert "## Routing telemetry" in md
    assert "| topk | 2.000 | 0.0% | 3.000 |" in md and "| sparsemixer | 1.200 | 30.0% | 3.000 |" in md
    groups = {g["estimator"]: g for g in json.loads((tmp_path / "c" / "compare.json").read_text())["groups"]}
    assert groups["topk"]["telemetry"] == {"imbalance": 2.0, "nograd": 0.0, "logit_rms": 3.0}


def test_compare_groups_by_arm_so_routing_variants_of_one_estimator_stay_apart(tmp_path, capsys):
    plain = {"balance": "loss", "score": "softmax", "shared_experts": 0, "expert_ffn_dim": None, "num_experts": 4}
    variants = {"topk": plain, "topk[balance=loss_free]": {**plain, "balance": "loss_free"},
                "topk[shared_experts=1, expert_ffn_dim=64]": {**plain, "shared_experts": 1, "expert_ffn_dim": 64,
                                                              "num_experts": 8}}
    for i, (label, moe) in enumerate(variants.items()):
        for seed in (1, 2):
            write_run(tmp_path / "s", f"v{i}-{seed}", "topk", seed, [(10, 3.0 - i * 0.1 - seed * 0.01)], moe=moe,
                      load={"moe_imbalance": 1.0 + i, "moe_active": 1.0, "moe_sparsity": 0.75})
    write_run(tmp_path / "s", "remoe-1", "remoe", 1, [(10, 2.5)], moe=plain,
              load={"moe_imbalance": 1.4, "moe_active": 1.4, "moe_sparsity": 0.65, "moe_l1_coeff": 2e-4})
    assert run(["compare", str(tmp_path / "s"), "--out", str(tmp_path / "c")]) == 0
    doc = json.loads((tmp_path / "c" / "compare.json").read_text())
    groups = {g["estimator"]: g for g in doc["groups"]}
    assert set(groups) == {*variants, "remoe"} and doc["groups"][0]["estimator"] == "topk"  # the plain baseline
    assert groups["topk[balance=loss_free]"]["seeds"] == [1, 2]
    assert groups["topk[balance=loss_free]"]["best"]["mean"] == pytest.approx(2.885)
    md = (tmp_path / "c" / "compare.md").read_text()
    assert "| remoe | 1.400 | n/a | n/a | 1.40 | 65.0% | 2.00e-04 |" in md
    assert "| topk[balance=loss_free] | 2.000 | n/a | n/a | 1.00 | 75.0% | - |" in md
    assert "moe.num_experts" in md  # the fine-grained arm's expert count is listed as a difference
