import json

import pytest
import torch

from smx.cli import run
from smx.diagnose import exact_gradient, make_problem, study


def test_study_rows_and_expected_ordering():
    r = study(experts=4, k=1, tokens=16, samples=3000, loss="linear", jitter_eps=1e6)
    rows = {row["estimator"]: row for row in r["rows"]}
    assert set(rows) == {"topk", "straight_through", "sparsemixer_1st", "sparsemixer", "sparsemixer_inf",
                         "sparsemixer_v2", "default_moe", "densemixer"}
    # unbiased for a linear loss: bias within a few noise floors
    assert rows["sparsemixer_1st"]["rel_bias"] < 5 * rows["sparsemixer_1st"]["noise_floor"]
    assert rows["sparsemixer_v2"]["cosine"] > 0.99 and abs(rows["sparsemixer_v2"]["rel_bias"] - 0.5) < 0.05
    assert rows["topk"]["rel_std"] < 1e-9  # deterministic
    assert rows["densemixer"]["rel_std"] < 1e-9  # deterministic too: top-k forward, dense backward


def test_top1_estimators_are_skipped_for_k2():
    r = study(experts=3, k=2, tokens=4, samples=50, loss="quadratic")
    assert set(r["skipped"]) == {"sparsemixer_1st", "sparsemixer", "sparsemixer_inf", "remoe"}
    assert {row["estimator"] for row in r["rows"]} == {"topk", "straight_through", "sparsemixer_v2", "default_moe",
                                                             "densemixer"}


def test_exact_gradient_k_equals_experts_has_no_routing_choice_left_but_order():
    # k = E: every expert is used; the objective still depends on W through the stage probabilities
    p = make_problem(experts=2, k=2, tokens=3, loss="quadratic")
    g = exact_gradient(p)
    assert g.shape == (2, 16) and torch.isfinite(g).all()


def test_cli_writes_json_and_refuses_overwrite(tmp_path, capsys):
    out = tmp_path / "fid.json"
    assert run(["diagnose", "gradients", "--tokens", "8", "--samples", "100", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["settings"]["tokens"] == 8 and len(data["rows"]) == 8
    before = out.read_text()
    assert run(["diagnose", "gradients", "--json", str(out)]) == 2
    assert "file exists" in capsys.readouterr().err
    assert out.read_text() == before


@pytest.mark.parametrize("args,needle", [(["--loss", "cubic"], "--loss"), (["--k", "5"], "--k"),
                                         (["--samples", "1"], "--samples"), (["--experts", "x"], "experts")])
def test_cli_bad_input_is_one_line_exit_2(args, needle, capsys):
    assert run(["diagnose", "gradients", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err


def test_masked_reference_makes_sparsemixer_unbiased_for_linear_loss():
    """Against its own masked forward, the Euler rule is again exact for a linear loss."""
    r = study(experts=4, k=1, tokens=16, samples=20000, loss="linear", reference_eps=0.1, offset=10.0,
              names=["sparsemixer_1st"])
    row = r["rows"][0]
    assert row["rel_bias"] < 5 * row["noise_floor"] and row["cosine"] > 0.99


def test_reference_eps_none_equals_huge_band():
    p = make_problem(experts=3, k=2, tokens=4, loss="mlp")
    torch.testing.assert_close(exact_gradient(p), exact_gradient(p, reference_eps=1e9))
