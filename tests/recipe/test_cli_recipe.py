"""`smx recipe validate` / `smx recipe show`: ok or one line per problem, exit 2, no traceback."""

from __future__ import annotations

from pathlib import Path

from smx.cli import run

REPO = Path(__file__).resolve().parents[2]
GOOD = REPO / "recipes" / "tiny.yaml"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_validate_all_shipped(capsys):
    files = sorted(str(p) for p in (REPO / "recipes").glob("*.yaml"))
    assert run(["recipe", "validate", *files]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"ok: {f}" for f in files]


def test_validate_reports_each_problem_and_exits_2(tmp_path, capsys):
    bad = write(tmp_path, "bad.yaml", GOOD.read_text().replace("k: 1", "k: 5").replace("lr: 3.0e-3", "lr: -1")
                .replace("num_workers: 0", "num_workers: 0\n  max_updates: 3"))
    dup = write(tmp_path, "dup.yaml", GOOD.read_text().replace("seed: 1", "seed: 1\nseed: 2"))
    broken = write(tmp_path, "broken.yaml", "name: [x\n")
    assert run(["recipe", "validate", str(GOOD), str(bad), str(dup), str(broken)]) == 2
    cap = capsys.readouterr()
    assert cap.out.splitlines() == [f"ok: {GOOD}"]
    err = cap.err.splitlines()
    assert f"error: {bad}: moe.k: 5 > moe.num_experts=4" in err
    assert f"error: {bad}: optim.lr: -1.0 must be > 0" in err
    assert f"error: {bad}: train.max_updates: unknown key; did you mean 'max_update'?" in err
    assert any(line.startswith(f"error: {dup}: seed: duplicate key") for line in err)
    assert any(line.startswith(f"error: {broken}: YAML syntax error: line 2") for line in err)
    assert "Traceback" not in cap.err


def test_validate_missing_file(tmp_path, capsys):
    assert run(["recipe", "validate", str(tmp_path / "none.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'none.yaml'}: recipe file not found"


def test_show_resolved_with_overrides(capsys):
    assert run(["recipe", "show", str(GOOD), "--set", "moe.num_experts=8", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert "num_experts: 8" in out and "seed: 5" in out and "warmup_init_lr:" in out


def test_show_bad_override_one_line_exit_2(capsys):
    assert run(["recipe", "show", str(GOOD), "--set", "moe.experts=8"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {GOOD}: --set moe.experts: unknown key; did you mean 'moe.num_experts'?"
