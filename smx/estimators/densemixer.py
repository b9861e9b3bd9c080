"""DenseMixer (Yao et al., 2025, "DenseMixer: Improving MoE Post-Training with Precise Router Gradient";
yaof20/DenseMixer, densemixer/models/*_custom.py).

Forward: standard top-k, D = top-k of p = softmax(z), gate = p_D (with `normalize`: p_D / r, r = sum_k p_D); every
expert is computed (a dense estimator), but the output is the sparse one:
    y = sg(sparse) + dense - sg(dense),  sparse = sum_k gate_k E_{D_k}(x),  dense = sum_e w_e E_e(x)
with w = p, or with `normalize` the reference's "partscale_fix_expert" weights w_e = p_e / r on the chosen experts
and p_e / sg(r) on the others. So
    router:  dL/dz = J_w^T [<g, E_e(x)>]_e   over ALL experts (the dense gradient),
    experts: dL/dtheta_e = gate * g on the tokens routed to e only (the reference masks the other tokens' expert
             gradient), which is exactly top-k's expert gradient.
In the layer: gate = stop_gradient(w_D) carries the experts' gradient, dense_weight = w - stop_gradient(w) (forward
value 0) the router's. Eval: plain top-k with the same gates (no dense term).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from smx.estimators.base import Estimator, Routing, one_hot_mask, select_top_k


def dense_weights(probs: Tensor, index: Tensor, normalize: bool) -> Tensor:
    """w (tokens, E): p, or p_e / r on the chosen experts and p_e / sg(r) elsewhere (r = sum of the chosen p)."""
    if not normalize:
        return probs
    r = probs.gather(1, index).sum(dim=-1, keepdim=True)  # (tokens, 1)
    chosen = one_hot_mask(index, probs.shape[-1])  # (tokens, E)
    return torch.where(chosen, probs / r, probs / r.detach())


@dataclass(frozen=True)
class DenseMixer(Estimator):
    """Options: normalize (renormalize the k gates over the chosen experts, as Qwen's norm_topk_prob)."""

    normalize: bool = False
    name: ClassVar[str] = "densemixer"
    dense: ClassVar[bool] = True
    top_k_selection: ClassVar[bool] = True  # D = top-k of p (+ the loss-free bias)

    def __post_init__(self) -> None:
        if not isinstance(self.normalize, bool):
            raise ValueError(f"normalize must be true or false for estimator {self.name!r}; got {self.normalize!r}")

    def __call__(self, logits: Tensor, k: int = 1, training: bool = True, generator=None, *,
                 score: str = "softmax", bias: Tensor | None = None) -> Routing:
        z = logits.float()  # (tokens, E)
        probs = torch.softmax(z, dim=-1)  # (tokens, E)
        index = select_top_k(probs, k, bias)  # (tokens, k)
        w = dense_weights(probs, index, self.normalize)  # (tokens, E)
        gate = w.gather(1, index)  # (tokens, k)
        if not training:
            return Routing(expert_index=index, gate=gate, probs=probs)
        return Routing(expert_index=index, gate=gate.detach(), probs=probs, dense_weight=w - w.detach())
