"""The dataset registry: a plain dict from name to DatasetSpec, and get() listing the choices."""

from __future__ import annotations

from smx.errors import UserError

from data_prep.datasets import ding, multi30k, shakespeare, synthetic_lm, synthetic_mt, wikitext, wmt14
from data_prep.steps.spec import DatasetSpec

REGISTRY: dict[str, DatasetSpec] = {
    spec.info.name: spec
    for spec in (wmt14.SPEC, multi30k.SPEC, ding.SPEC, wikitext.SPEC, shakespeare.SPEC, synthetic_mt.SPEC,
                 synthetic_lm.SPEC)
}


def get(name: str) -> DatasetSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}; choices: {', '.join(REGISTRY)}") from None
