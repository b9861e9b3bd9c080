"""SparseMixer v2 from GRIN (Liu et al., 2024, "GRIN: GRadient-INformed MoE"), top-k by sampling without replacement.

Stage j = 1..k: the experts chosen in earlier stages are set to -inf, the 2*eps mask uses this stage's maximum,
D_j ~ masked softmax (Gumbel-max); gate_j = s_j * p_D with s_j = 1 if D_j is the stage argmax or with probability 1/4
(u > 3/4, as the reference's `rand_like(...) > 0.75`), else s_j = 1/3 (GRIN's third-order rule, Heun:
f(x) - f(0) = 1/4 f'(x) + 3/4 f'(x/3); the reference writes the constants as 0.3333 + 0.6667 * mask). Gates are not
renormalized. Eval: each stage's argmax with gate p_D of that stage's masked softmax.
Backward (router), per stage: dL/dz = <g, E_D> p_D (e_D - p), written to the raw logits: no factor 2, no factor s.
Balance loss of the reference (transformers' phimoe, Mixtral's load_balancing_loss_func): f from the DETERMINISTIC
top-k of the full softmax, P the full softmax (`balance_inputs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from smx.estimators.base import Estimator, Routing, check_eps, uniform
from smx.estimators.sparsemixer import route_masked


def third_order_scale(is_argmax: Tensor, generator: torch.Generator | None) -> Tensor:
    """s = 1 if argmax or u > 3/4 (u ~ U(0, 1)), else 1/3."""
    u = uniform(is_argmax.shape, is_argmax.device, generator)
    return torch.where(is_argmax | (u > 0.75), 1.0, 1.0 / 3.0).float()


@dataclass(frozen=True)
class SparseMixerV2(Estimator):
    """Options: jitter_eps (GRIN reference 0.01)."""

    jitter_eps: float = 0.01
    name: ClassVar[str] = "sparsemixer_v2"
    masked_sampling: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_eps(self.name, self.jitter_eps)

    def __call__(self, logits: Tensor, k: int = 2, training: bool = True, generator=None) -> Routing:
        return route_masked(logits, k, self.jitter_eps, training, generator, third_order_scale, grad_scale=1.0)

    def balance_inputs(self, logits: Tensor, routing: Routing, k: int) -> tuple[Tensor, Tensor]:
        """The reference's: P the full softmax, f from its deterministic top-k (not the sampled experts)."""
        return routing.probs, routing.probs.detach().topk(k, dim=-1).indices
