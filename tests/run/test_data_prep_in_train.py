"""`smx train` prepares a missing dataset first (data_prep.prepare), or says which `smx data prep` to run."""

from __future__ import annotations

from pathlib import Path

import pytest

from smx.recipe import recipes
from smx.run import train as training
from smx.cli import run
from smx.errors import UserError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def failing_prep(monkeypatch):
    import data_prep

    def prepare(name, root, **kwargs):
        raise UserError(f"{name}: cannot reach the download server")

    monkeypatch.setattr(data_prep, "is_prepared", lambda name, root: False)
    monkeypatch.setattr(data_prep, "prepare", prepare)


def test_unpreparable_dataset_names_the_command(failing_prep, tmp_path: Path):
    recipe = recipes.load(REPO / "recipes/wmt14_switch.yaml", [f"data.root={tmp_path}"])
    with pytest.raises(UserError) as info:
        training.data_dir(recipe)
    assert str(info.value) == (
        f"dataset wmt14-en-de is not prepared under {tmp_path} and preparing it here failed (wmt14-en-de: cannot "
        f"reach the download server); run: smx data prep wmt14-en-de --out {tmp_path} --source DIR_OR_URL")


def test_unpreparable_dataset_cli_exit_2_no_run_dir(failing_prep, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run(["train", str(REPO / "recipes/tiny.yaml"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "run: smx data prep synthetic-mt" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_worker_node_never_prepares_data(tmp_path: Path, monkeypatch, capsys):
    """--node-rank > 0 with an unprepared dataset: one line saying to prepare it first; nothing prepared, no run."""
    import data_prep

    monkeypatch.setattr(data_prep, "prepare", lambda *a, **k: pytest.fail("a worker node must not prepare data"))
    root = tmp_path / "data"
    assert run(["train", str(REPO / "recipes/tiny.yaml"), "--run-dir", str(tmp_path / "run"), "--set",
                f"data.root={root}", "--nnodes", "2", "--node-rank", "1", "--master-addr", "127.0.0.1",
                "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: dataset synthetic-mt is not prepared under {root}: a worker node "
                                f"(--node-rank > 0) does not prepare data; run smx data prep synthetic-mt --out "
                                f"{root} first where every node sees it"], err
    assert list(tmp_path.iterdir()) == []


def test_data_dir_override_used_as_is(tmp_path: Path):
    recipe = recipes.load(REPO / "recipes/tiny.yaml", [f"data.dir={tmp_path}"])
    assert training.data_dir(recipe) == tmp_path
