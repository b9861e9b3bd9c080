"""The peer baseline: top-1 MoE with one-hot einsum dispatch and combine (the GShard formulation used by fairseq's
MOELayer and DeepSpeed), written here for the benchmark only.

Per token: p = softmax(W x); D = argmax p; each expert keeps its first C = ceil(cf * T / E) tokens (position order);
the dispatch and combine tensors are dense (tokens, experts, capacity):
    dispatch[t, e, c] = 1 if token t is expert e's c-th kept token     (tokens, E, C)
    combine[t, e, c]  = p_D(t) * dispatch[t, e, c]
    expert_in = einsum("tec,td->ecd", dispatch, x)                      (E, C, d)
    y = einsum("tec,ecd->td", combine, expert_out)                      (tokens, d)
Experts are separate nn.Linear pairs (one weight tensor per expert), run one after another on their (C, d) block.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def top1_einsum_gating(logits: Tensor, capacity_factor: float) -> tuple[Tensor, Tensor, Tensor]:
    """logits (T, E) -> (balance loss (), combine (T, E, C) float, dispatch (T, E, C) bool)."""
    num_tokens, num_experts = logits.shape
    capacity = math.ceil(capacity_factor * num_tokens / num_experts)
    probs = torch.softmax(logits.float(), dim=1)  # (T, E)
    choice = probs.argmax(dim=1)  # (T,)
    mask = F.one_hot(choice, num_experts)  # (T, E) int64
    balance = num_experts * (probs.mean(0) * mask.float().mean(0)).sum()
    position = torch.cumsum(mask, dim=0) - 1  # (T, E) rank of the token within its expert
    mask = mask * (position < capacity)  # over-capacity tokens dropped
    slot = (position * mask).sum(dim=1)  # (T,)
    gate = (probs * mask).sum(dim=1)  # (T,) 0 for dropped tokens
    slot_one_hot = F.one_hot(slot, capacity).float()  # (T, C)
    combine = torch.einsum("te,tc->tec", gate.unsqueeze(1) * mask.float(), slot_one_hot)  # (T, E, C)
    return balance, combine, combine.bool()


class EinsumMoE(nn.Module):
    """Top-1 Switch layer with dense one-hot dispatch/combine. forward(x (T, d)) -> (y (T, d), balance loss)."""

    def __init__(self, d_model: int, d_ff: int, num_experts: int, capacity_factor: float = 1.25) -> None:
        super().__init__()
        self.capacity_factor = capacity_factor
        self.gate = nn.Linear(d_model, num_experts, bias=False)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Linear(d_ff, d_model)) for _ in range(num_experts)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        balance, combine, dispatch = top1_einsum_gating(self.gate(x).float(), self.capacity_factor)
        expert_in = torch.einsum("tec,td->ecd", dispatch.to(x.dtype), x)  # (E, C, d)
        expert_out = torch.stack([expert(block) for expert, block in zip(self.experts, expert_in)])  # (E, C, d)
        y = torch.einsum("tec,ecd->td", combine.to(x.dtype), expert_out)  # (T, d)
        return y, balance
