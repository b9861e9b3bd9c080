"""Router gradient estimators: a plain dict registry (DESIGN.md sections 3-4). Pure PyTorch, no fairseq.

    est = smx.estimators.get("sparsemixer", jitter_eps=0.1)
    routing = est(logits, k=1, training=True, generator=g)   # Routing(expert_index, gate, probs, ...)
"""

from __future__ import annotations

from smx.estimators.base import Estimator, Routing
from smx.estimators.default_moe import DefaultMoE
from smx.estimators.densemixer import DenseMixer
from smx.estimators.remoe import ReMoE
from smx.estimators.sparsemixer import SparseMixer
from smx.estimators.sparsemixer_1st import SparseMixerFirstOrder
from smx.estimators.sparsemixer_inf import SparseMixerIntegral
from smx.estimators.sparsemixer_v2 import SparseMixerV2
from smx.estimators.straight_through import StraightThrough
from smx.estimators.topk import TopK

REGISTRY: dict[str, type[Estimator]] = {
    cls.name: cls
    for cls in (TopK, StraightThrough, SparseMixerFirstOrder, SparseMixer, SparseMixerIntegral, SparseMixerV2,
                DefaultMoE, DenseMixer, ReMoE)
}

__all__ = ["Estimator", "Routing", "REGISTRY", "names", "get"]


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str, **options) -> Estimator:
    """The estimator `name` with `options`; unknown names or options raise ValueError listing the valid ones."""
    if name not in REGISTRY:
        raise ValueError(f"unknown estimator {name!r}; choose one of: {', '.join(REGISTRY)}")
    cls = REGISTRY[name]
    valid = cls.option_names()
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for estimator {name!r}; valid options: {', '.join(valid) or 'none'}"
        )
    return cls(**options)
