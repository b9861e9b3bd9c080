"""ReMoE (Wang, Zhu & Chen, ICLR 2025, "ReMoE: Fully Differentiable Mixture-of-Experts with ReLU Routing";
reference code thu-ml/ReMoE, Megatron-LM's router with `--moe-relu-routing`).

Forward (training and evaluation alike): g = ReLU(z) over every expert: no softmax, no top-k. Expert e computes
token t iff g_te > 0, so the number of experts per token varies (Routing.active), and the output is
sum_e g_te E_e(x_t) with the gates unnormalized.
Backward: ordinary autograd through ReLU: dL/dz_te = dL/dg_te * 1[z_te > 0]. A token whose gates are all 0 reaches
no expert and its router gets no task gradient (no_gradient_tokens).
Sparsity control (the layer's, smx.moe.per_update.ReluControl): a penalty lambda * L1 with the Switch balance
formula on the gates, L1 = E * sum_e mean_t(g_te) * n_e / (T * k) (n_e the tokens with g_te > 0), whose
coefficient adapts after every update: lambda <- lambda * alpha^sign((1 - k / E) - S), S the sparsity reached (fraction of zero gates),
lambda_0 = l1_coeff (1e-8), alpha = l1_multiplier (1.2). k only sets the target sparsity 1 - k / E.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from smx.estimators.base import Estimator, Routing


@dataclass(frozen=True)
class ReMoE(Estimator):
    """Options: l1_coeff (lambda_0, the initial penalty coefficient), l1_multiplier (alpha > 1, its step factor)."""

    l1_coeff: float = 1e-8
    l1_multiplier: float = 1.2
    name: ClassVar[str] = "remoe"
    variable_k: ClassVar[bool] = True
    balance_loss: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for key, value, low in (("l1_coeff", self.l1_coeff, 0.0), ("l1_multiplier", self.l1_multiplier, 1.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value <= low:
                raise ValueError(f"{key} must be a number > {low:g} for estimator {self.name!r}; got {value!r}")

    def validate(self, k: int, num_experts: int, score: str = "softmax", balance: str = "loss") -> None:
        if score != "softmax":
            raise ValueError(f"moe.score={score}: estimator {self.name!r} gates with ReLU(z), neither a softmax nor "
                             "a sigmoid; leave moe.score at softmax (its default)")
        if balance != "loss":
            raise ValueError(f"moe.balance={balance}: estimator {self.name!r} balances through its adaptive L1 "
                             "penalty (router.options l1_coeff, l1_multiplier), not a balance loss or a selection "
                             "bias; leave moe.balance at loss (moe.balance_weight does not act on it)")
        super().validate(k, num_experts, score, balance)
        if k >= num_experts:
            raise ValueError(f"estimator {self.name!r} targets the sparsity 1 - k/E; moe.k={k} with "
                             f"moe.num_experts={num_experts} makes it 0 (every expert on every token)")

    def no_gradient_tokens(self, logits: Tensor, routing: Routing, k: int) -> Tensor:
        """The tokens whose gates are all 0 (ReLU of non-positive logits): no expert, no router gradient."""
        return ~routing.active.any(dim=1)

    def __call__(self, logits: Tensor, k: int = 1, training: bool = True, generator=None, *,
                 score: str = "softmax", bias: Tensor | None = None) -> Routing:
        z = logits.float()  # (tokens, E)
        gate = torch.relu(z)  # (tokens, E)
        active = gate.detach() > 0  # (tokens, E)
        total = gate.detach().sum(dim=1, keepdim=True)  # (tokens, 1)
        probs = gate.detach() / total.clamp(min=torch.finfo(total.dtype).tiny)  # (tokens, E); all-zero rows stay 0
        index = torch.arange(z.shape[1], device=z.device).expand(z.shape[0], -1)  # (tokens, E) every expert
        return Routing(expert_index=index, gate=gate, probs=probs, active=active)
