"""Fixtures shared by every test suite: prepared synthetic data, in-process `smx train`, and fairseq-binarized toy
corpora (the plugin's tests and the end-to-end tests under tests/e2e both use them)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
# helper modules of the suites (imported by bare name, as pytest's prepend import mode allows inside each folder)
for helpers in ("reliability", "fairseq_plugin", "data_prep"):
    if str(TESTS / helpers) not in sys.path:
        sys.path.insert(0, str(TESTS / helpers))


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or fills the user's download cache."""
    monkeypatch.delenv("SMX_DATA_CACHE", raising=False)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """synthetic-mt and synthetic-lm prepared once per session through data_prep (the code behind smx data prep)."""
    import data_prep

    root = tmp_path_factory.getbasetemp() / "shared-data"
    root.mkdir(exist_ok=True)
    for name in ("synthetic-mt", "synthetic-lm"):
        data_prep.prepare(name, root=root, progress=False)
        assert data_prep.is_prepared(name, root)
    return root


@pytest.fixture
def train(data_root: Path, tmp_path: Path, capsys):
    """Run `smx train RECIPE ...` in-process with data under data_root and runs under tmp_path; returns exit code."""
    from smx.cli import run

    def go(recipe: str | None, *args: str) -> int:
        code = run(["train", *([str(REPO / "recipes" / recipe)] if recipe else []), "--runs-root", str(tmp_path / "runs"),
                    "--set", f"data.root={data_root}", "--no-progress", *args])
        out = capsys.readouterr()
        if code != 0:
            print(out.err)
        return code

    return go


@pytest.fixture(scope="session")
def dict_dir(tmp_path_factory):
    """Dictionaries only: enough for fairseq's setup_task (translation src->tgt, joined; LM)."""
    import plugin_helpers as h

    return h.write_dicts(tmp_path_factory.mktemp("dicts"))


@pytest.fixture(scope="session")
def mt_bin(tmp_path_factory):
    """A tiny generated translation corpus binarized by fairseq_cli.preprocess (joined dictionary)."""
    import plugin_helpers as h

    return h.binarize_mt(tmp_path_factory.mktemp("mt"))


@pytest.fixture(scope="session")
def lm_bin(tmp_path_factory):
    """A tiny generated monolingual corpus binarized by fairseq_cli.preprocess --only-source."""
    import plugin_helpers as h

    return h.binarize_lm(tmp_path_factory.mktemp("lm"))
