"""Fixtures for the fairseq plugin tests (helpers live in plugin_helpers.py)."""

from __future__ import annotations

import pytest

import plugin_helpers as h


@pytest.fixture(scope="session")
def dict_dir(tmp_path_factory):
    """Dictionaries only: enough for fairseq's setup_task (translation src->tgt, joined; LM)."""
    return h.write_dicts(tmp_path_factory.mktemp("dicts"))


@pytest.fixture(scope="session")
def mt_bin(tmp_path_factory):
    """A tiny generated translation corpus binarized by fairseq_cli.preprocess (joined dictionary)."""
    return h.binarize_mt(tmp_path_factory.mktemp("mt"))


@pytest.fixture(scope="session")
def lm_bin(tmp_path_factory):
    """A tiny generated monolingual corpus binarized by fairseq_cli.preprocess --only-source."""
    return h.binarize_lm(tmp_path_factory.mktemp("lm"))
