"""Standard top-k gating: Switch Transformer (Fedus et al., 2021) for k = 1, GShard-style for k >= 2.

Forward: in training, optional multiplicative logit jitter z * U(1 - eps, 1 + eps); p = softmax(z);
D = top-k of p; gate = p_D (k >= 2, option `normalize`: p_D / sum_k p_D).
Backward: ordinary autograd through p_D only: the gating term sum_D dL/dgate_D * dp_D/dz. The routing term (which
expert was chosen) gets no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from smx.estimators.base import Estimator, Routing, check_eps, uniform


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

    def __post_init__(self) -> None:
        check_eps(self.name, self.jitter_eps)
        if not isinstance(self.normalize, bool):
            raise ValueError(f"normalize must be true or false for estimator {self.name!r}; got {self.normalize!r}")

    def validate(self, k: int, num_experts: int) -> None:
        super().validate(k, num_experts)
        if k == 1 and self.normalize:
            raise ValueError(
                f"estimator {self.name!r} with normalize=true and moe.k=1 makes the gate constant 1: the router would "
                "get no task gradient; use normalize=false for top-1"
            )

    def __call__(self, logits: Tensor, k: int = 1, training: bool = True, generator=None) -> Routing:
        z = logits.float()  # (tokens, E)
        if training:
            z = jitter_logits(z, self.jitter_eps, generator)
        probs = torch.softmax(z, dim=-1)  # (tokens, E)
        gate, index = probs.topk(k, dim=-1)  # (tokens, k) each
        if self.normalize:
            gate = gate / gate.sum(dim=-1, keepdim=True)
        return Routing(expert_index=index, gate=gate, probs=probs)
