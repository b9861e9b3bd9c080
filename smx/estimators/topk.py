"""Standard top-k gating: Switch Transformer (Fedus et al., 2021) for k = 1, GShard-style for k >= 2.

Forward: in training, optional multiplicative logit jitter z * U(1 - eps, 1 + eps); p = softmax(z);
D = top-k of p; gate = p_D (k >= 2, option `normalize`: p_D / sum_k p_D).
Sigmoid scores (moe.score=sigmoid, DeepSeek-V3): p = sigmoid(z), gate = p_D / sum_k p_D when k >= 2, p_D at k = 1.
Loss-free balancing (moe.balance=loss_free, Wang et al. 2024): D = top-k of p + b, gate still from p.
Backward: ordinary autograd through p_D only: the gating term sum_D dL/dgate_D * dp_D/dz. The routing term (which
expert was chosen) gets no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from smx.estimators.base import Estimator, Routing, check_eps, scores_of, select_top_k, uniform


def jitter_logits(logits: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    """z * U(1 - eps, 1 + eps), a new tensor (never in place)."""
    if eps == 0:
        return logits
    u = uniform(logits.shape, logits.device, generator)
    return logits * (1.0 - eps + 2.0 * eps * u)


@dataclass(frozen=True)
class TopK(Estimator):
    """Options: jitter_eps (0 = no jitter, the default), normalize (renormalize the k gates; k >= 2 only)."""

    jitter_eps: float = 0.0
    normalize: bool = False
    name: ClassVar[str] = "topk"
    scores: ClassVar[tuple[str, ...]] = ("softmax", "sigmoid")
    top_k_selection: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_eps(self.name, self.jitter_eps)
        if not isinstance(self.normalize, bool):
            raise ValueError(f"normalize must be true or false for estimator {self.name!r}; got {self.normalize!r}")

    def validate(self, k: int, num_experts: int, score: str = "softmax", balance: str = "loss") -> None:
        super().validate(k, num_experts, score, balance)
        if k == 1 and self.normalize:
            raise ValueError(
                f"estimator {self.name!r} with normalize=true and moe.k=1 makes the gate constant 1: the router would "
                "get no task gradient; use normalize=false for top-1"
            )

    def __call__(self, logits: Tensor, k: int = 1, training: bool = True, generator=None, *,
                 score: str = "softmax", bias: Tensor | None = None) -> Routing:
        z = logits.float()  # (tokens, E)
        if training:
            z = jitter_logits(z, self.jitter_eps, generator)
        s, probs = scores_of(z, score)  # (tokens, E) each
        index = select_top_k(s, k, bias)  # (tokens, k)
        gate = s.gather(1, index)  # (tokens, k)
        if self.normalize or (score == "sigmoid" and k > 1):
            gate = gate / gate.sum(dim=-1, keepdim=True)
        return Routing(expert_index=index, gate=gate, probs=probs)
