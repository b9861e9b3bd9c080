"""Straight-through router gradient (Bengio et al., 2013; as in the ReinMax repository) and Straight-Through Gumbel.

Forward: D ~ softmax(z) (Gumbel-max on z + G, without replacement for k >= 2), or with `deterministic` the top-k of
z; the chosen experts' outputs are added with gate value 1 (hard one-hot). tau does NOT change the sampling.
Backward: the hard one-hot h is treated as a soft surrogate q:
    straight-through (ReinMax's ST):      q = softmax(z / tau)
    Straight-Through Gumbel (`gumbel`):   q = softmax((z + G) / tau), G the sample's own Gumbel noise, as
                                          torch.nn.functional.gumbel_softmax(z, tau, hard=True)
so dL/dz = J_q^T [<g, E_i(x)>]_i over ALL experts i, which needs every expert's output: a dense estimator. The layer
adds sum_i dense_weight_i * E_i(x) with dense_weight = q - stop_gradient(q) (forward value 0). In eval, D = top-k of
z. (`deterministic` is a deterministic-forward straight-through, not DenseMixer: that is the `densemixer` estimator.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from smx.estimators.base import Estimator, Routing, gumbel


@dataclass(frozen=True)
class StraightThrough(Estimator):
    """Options: tau (surrogate temperature), gumbel (Gumbel-softmax surrogate), deterministic (top-k forward)."""

    tau: float = 1.0
    gumbel: bool = False
    deterministic: bool = False
    name: ClassVar[str] = "straight_through"
    dense: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not (isinstance(self.tau, (int, float)) and self.tau > 0):
            raise ValueError(f"tau must be a number > 0 for estimator {self.name!r}; got {self.tau!r}")
        for key in ("gumbel", "deterministic"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key} must be true or false for estimator {self.name!r}")
        if self.gumbel and self.deterministic:
            raise ValueError(f"estimator {self.name!r}: gumbel and deterministic exclude each other")

    def __call__(self, logits: Tensor, k: int = 1, training: bool = True, generator=None) -> Routing:
        z = logits.float()  # (tokens, E)
        probs = torch.softmax(z, dim=-1)  # (tokens, E)
        if not training or self.deterministic:
            index = z.detach().topk(k, dim=-1).indices  # (tokens, k)
            surrogate = torch.softmax(z / self.tau, dim=-1)
        else:
            noise = gumbel(z.shape, z, generator)  # (tokens, E)
            index = (z.detach() + noise).topk(k, dim=-1).indices  # (tokens, k): D ~ softmax(z)
            surrogate = torch.softmax((z + noise) / self.tau, dim=-1) if self.gumbel \
                else torch.softmax(z / self.tau, dim=-1)
        gate = torch.ones(index.shape, device=z.device)  # (tokens, k), hard one-hot value
        dense = (surrogate - surrogate.detach()) if training else None  # (tokens, E), value 0
        return Routing(expert_index=index, gate=gate, probs=probs, dense_weight=dense)
