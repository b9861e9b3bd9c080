"""SparseMixer v1 (Liu et al., 2023, "Sparse Backpropagation for MoE Training"), top-1.

Forward: D ~ masked softmax (Gumbel-max over the logits with experts outside the 2*eps band set to -inf);
gate = s * p_D with s = 1 if D is the argmax or with probability 1/2 (u > 1/2, u ~ U(0, 1), as the reference's
`rand_like(...) > 0.5`), else s = 1/2 (the mid-point rule of the paper's ODE approximation of the routing gradient).
p is the MASKED softmax (masked experts get 0), in training and in evaluation, as in the reference.
Backward (router): dL/dz = 2 <g, E_D> p_D (e_D - p), written to the raw logits; the factor s is ignored because
g = dL/dy already comes from the scaled forward.
Balance loss of the reference (microsoft/SparseMixer sparsemixer/sparsemixer.py): E * sum_i f_i P_i with P the mean of
the MASKED softmax and f the sampled experts' fractions (`balance_inputs`).

The masked-sampling loop below is shared by the whole family (sparsemixer_1st, sparsemixer_inf, sparsemixer_v2),
which differ only in the forward scale rule and the backward factor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import Tensor

from smx.estimators.base import Estimator, Routing, check_eps, keep_mask, masked_softmax, one_hot_mask, sample_masked
from smx.estimators.base import uniform

# A scale rule maps (is_argmax (tokens, 1) bool, generator) to the forward scale s (tokens, 1) float32.
ScaleRule = Callable[[Tensor, "torch.Generator | None"], Tensor]


class SparseMixerGate(torch.autograd.Function):
    """gate = s * p_D, p = softmax of the logits over the kept experts (masked ones get p = 0).

    Backward: dL/dz = grad_scale * (dL/dgate) * p_D * (e_D - p)   (tokens, E)
    i.e. grad_scale <g, E_D> p_D (e_D - p): SparseMixer v1's mid-point rule with grad_scale = 2, GRIN's per-stage rule
    with grad_scale = 1. The factor s is deliberately absent from the backward. Where s == grad_scale this backward
    is the exact derivative of the forward (which is what the float64 gradcheck in the tests verifies).
    Masked experts get exactly zero gradient (p = 0 there and they are never D).
    """

    @staticmethod
    def forward(ctx, logits: Tensor, keep: Tensor, index: Tensor, scale: Tensor, grad_scale: float) -> Tensor:
        # logits (tokens, E) ; keep (tokens, E) bool ; index (tokens, 1) int64 ; scale (tokens, 1)
        p = masked_softmax(logits, keep)  # (tokens, E)
        p_d = p.gather(1, index)  # (tokens, 1)
        ctx.save_for_backward(p, p_d, index)
        ctx.grad_scale = grad_scale
        return scale * p_d

    @staticmethod
    def backward(ctx, grad_gate: Tensor):
        p, p_d, index = ctx.saved_tensors
        g = grad_gate * p_d * ctx.grad_scale  # (tokens, 1)
        grad_logits = (-g) * p  # (tokens, E)
        grad_logits = grad_logits.scatter_add(1, index, g)
        return grad_logits, None, None, None, None


def midpoint_scale(is_argmax: Tensor, generator: torch.Generator | None) -> Tensor:
    """s = 1 if argmax or u > 1/2 (u ~ U(0, 1)), else 1/2."""
    first = is_argmax | (uniform(is_argmax.shape, is_argmax.device, generator) > 0.5)
    return torch.where(first, 1.0, 0.5).float()


def route_masked(
    logits: Tensor, k: int, eps: float, training: bool, generator: torch.Generator | None,
    scale_rule: ScaleRule, grad_scale: float,
) -> Routing:
    """k stages of masked sampling without replacement; stage j masks the experts chosen before it.

    Eval mode: D = argmax of each stage, s = 1 (deterministic), and the gate's backward is its exact derivative.
    """
    logits = logits.float()  # (tokens, E); routing in float32, never modified in place
    tokens, num_experts = logits.shape
    chosen = torch.zeros(tokens, num_experts, dtype=torch.bool, device=logits.device)
    indices, gates = [], []
    for stage in range(k):
        keep = keep_mask(logits, eps, excluded=chosen if stage else None)  # (tokens, E)
        masked = logits.detach().masked_fill(~keep, float("-inf"))
        argmax = masked.argmax(dim=-1, keepdim=True)  # (tokens, 1)
        if training:
            index = sample_masked(logits, keep, generator)  # (tokens, 1)
            scale = scale_rule(index == argmax, generator)  # (tokens, 1)
        else:
            index, scale = argmax, torch.ones(tokens, 1, device=logits.device)
        # eval: the plain derivative of the deterministic forward (as the references' autograd gives it)
        gates.append(SparseMixerGate.apply(logits, keep, index, scale.to(logits.device),
                                           grad_scale if training else 1.0))
        indices.append(index)
        chosen = chosen | one_hot_mask(index, num_experts)
    return Routing(
        expert_index=torch.cat(indices, dim=1),  # (tokens, k)
        gate=torch.cat(gates, dim=1),  # (tokens, k)
        probs=torch.softmax(logits, dim=-1),  # (tokens, E)
    )


@dataclass(frozen=True)
class SparseMixer(Estimator):
    """SparseMixer v1 (mid-point, second order). Options: jitter_eps (reference 0.1)."""

    jitter_eps: float = 0.1
    name: ClassVar[str] = "sparsemixer"
    max_k: ClassVar[int | None] = 1
    masked_sampling: ClassVar[bool] = True
    grad_scale: ClassVar[float] = 2.0

    def __post_init__(self) -> None:
        check_eps(self.name, self.jitter_eps)

    def scale(self, is_argmax: Tensor, generator: torch.Generator | None) -> Tensor:
        return midpoint_scale(is_argmax, generator)

    def __call__(self, logits: Tensor, k: int = 1, training: bool = True, generator=None) -> Routing:
        return route_masked(logits, k, self.jitter_eps, training, generator, self.scale, self.grad_scale)

    def balance_inputs(self, logits: Tensor, routing: Routing, k: int) -> tuple[Tensor, Tensor]:
        """The reference's: P from the masked softmax it samples from, f from the sampled experts."""
        z = logits.float()  # (tokens, E)
        return masked_softmax(z, keep_mask(z, self.jitter_eps)), routing.expert_index
