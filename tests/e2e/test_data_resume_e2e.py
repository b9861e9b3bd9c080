"""data_prep end to end, the slow part of tests/data_prep/test_data_resume.py: an injected failure then a re-run gives
byte-identical outputs; a changed --bpe-merges redoes only the steps after BPE learning."""

from __future__ import annotations

import pytest
from dp_helpers import NAME, OPTIONS, prepare_small as _prepare, reference, stable_manifest, tree  # noqa: F401

import data_prep
from smx.errors import UserError
from data_prep.steps import bpe


@pytest.mark.slow
def test_injected_exception_then_rerun_is_byte_identical(reference, tmp_path, monkeypatch):
    real_apply = bpe.apply

    def failing_apply(codes, sha, inputs, output, *a, **k):
        if output.name.startswith("valid.tgt"):
            output.write_text("half a file\n")
            raise RuntimeError("injected failure")
        return real_apply(codes, sha, inputs, output, *a, **k)

    monkeypatch.setattr(bpe, "apply", failing_apply)
    with pytest.raises(RuntimeError, match="injected"):
        _prepare(tmp_path)
    assert not data_prep.is_prepared(NAME, tmp_path)
    man = data_prep.manifest(NAME, tmp_path)
    assert man["complete"] is False and "apply bpe valid.tgt" not in man["steps"] and "binarize" not in man["steps"]
    assert not (tmp_path / NAME / "bpe" / "valid.tgt").exists() and not (tmp_path / NAME / "bin").exists()
    monkeypatch.setattr(bpe, "apply", real_apply)
    _prepare(tmp_path)
    assert tree(tmp_path / NAME) == tree(reference / NAME)
    assert stable_manifest(data_prep.manifest(NAME, tmp_path)) == stable_manifest(data_prep.manifest(NAME, reference))


@pytest.mark.slow
def test_changed_bpe_merges_redoes_only_downstream_steps(reference, tmp_path):
    import shutil

    shutil.copytree(reference / NAME, tmp_path / NAME)
    with pytest.raises(UserError, match="is already prepared with other settings \\(bpe_merges"):
        data_prep.prepare(NAME, root=tmp_path, bpe_merges=0, progress=False, options=OPTIONS)  # a finished dataset
    data_prep.prepare(NAME, root=tmp_path, bpe_merges=0, progress=False, options=OPTIONS, force=True)
    man = data_prep.manifest(NAME, tmp_path)
    assert "learn bpe" not in man["steps"] and not (tmp_path / NAME / "bpe" / "codes").exists()
    assert (tmp_path / NAME / "bpe" / "train.src").read_bytes() == (tmp_path / NAME / "tok" / "train.src").read_bytes()
    ref = data_prep.manifest(NAME, reference)
    assert man["steps"]["generate"]["finished"] == ref["steps"]["generate"]["finished"]  # not redone
    assert man["summary"]["bpe_merges"] == 0 and man["complete"] is True
