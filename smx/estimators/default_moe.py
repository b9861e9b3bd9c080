"""Default MoE (Panda et al., 2025, "Dense Backpropagation Improves Routing for Sparsely-Gated Mixture-of-Experts").

Forward (training): top-k as `topk`, plus for every UNselected expert i the term p_i * d_i, where d_i is a default
vector: the EMA (beta, 0.9 for 8 experts in the paper) of expert i's mean output over the tokens routed to it,
updated before use in the step and detached. The layer keeps d and adds default_weight @ d with
default_weight = p masked to the unselected experts.
Backward: ordinary autograd: every p_i gets a gradient (through p_D <g, E_D> for the chosen, p_i <g, d_i> for the
others), yet only the selected experts are computed.
Eval: the same forward (the paper's eq. 11 has no train/eval split), with the default vectors frozen (no EMA update
outside training). Plain top-k at eval would evaluate a different function from the one trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from smx.estimators.base import Routing, one_hot_mask
from smx.estimators.topk import TopK


@dataclass(frozen=True)
class DefaultMoE(TopK):
    """Options: beta (EMA decay of the default vectors), jitter_eps, normalize (as topk)."""

    beta: float = 0.9
    name: ClassVar[str] = "default_moe"
    uses_default_vectors: ClassVar[bool] = True
    scores: ClassVar[tuple[str, ...]] = ("softmax",)  # its default weights are the softmax of the unselected

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.beta, (int, float)) and 0 <= self.beta < 1):
            raise ValueError(f"beta must be in [0, 1) for estimator {self.name!r}; got {self.beta!r}")

    def __call__(self, logits: Tensor, k: int = 1, training: bool = True, generator=None, *,
                 score: str = "softmax", bias: Tensor | None = None) -> Routing:
        routing = super().__call__(logits, k, training, generator, score=score, bias=bias)
        selected = one_hot_mask(routing.expert_index, logits.shape[-1])  # (tokens, E)
        default_weight = routing.probs.masked_fill(selected, 0.0)  # (tokens, E)
        return Routing(routing.expert_index, routing.gate, routing.probs, default_weight=default_weight)
