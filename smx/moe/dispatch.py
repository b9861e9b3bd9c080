"""Index-based dispatch and combine (DESIGN.md section 5): no one-hot tokens x experts x capacity tensor.

The (tokens, k) routing assignments are flattened to tokens*k assignments (assignment a = t * k + j is token t's j-th
choice), stably sorted by expert so that each expert owns a contiguous slice, cut to the expert's capacity, run
through that expert, and scatter-added back to their tokens weighted by the gate. Dropped assignments contribute 0
(the residual connection outside the layer carries the token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def expert_capacity(num_tokens: int, num_experts: int, k: int, capacity_factor: float | None) -> int | None:
    """Per-expert capacity C = ceil(capacity_factor * k * num_tokens / num_experts); None = dropless.

    Rounding: the product is first rounded to 9 decimals so that float noise (1.1 * 10 = 11.000000000000002) does
    not add a slot, then rounded UP. C >= 1 whenever num_tokens >= 1 (capacity_factor > 0). num_tokens counts the
    routed (non-padding) tokens only.
    """
    if capacity_factor is None:
        return None
    return math.ceil(round(capacity_factor * k * num_tokens / num_experts, 9))


@dataclass(frozen=True)
class DispatchPlan:
    """Which assignments each expert computes, grouped by expert (expert 0's slice first)."""

    token: Tensor  # (n_kept,) int64 token of each kept assignment
    assignment: Tensor  # (n_kept,) int64 index into the flattened (tokens * k) assignments
    expert: Tensor  # (n_kept,) int64 expert of each kept assignment (non-decreasing)
    sizes: tuple[int, ...]  # (n_experts,) kept assignments per expert, host ints: the slice lengths
    counts: Tensor  # (n_experts,) int64 routed assignments per expert BEFORE the capacity drop
    kept: Tensor  # (tokens, k) bool, False = dropped by the capacity


def plan_dispatch(
    expert_index: Tensor, num_experts: int, capacity: int | None, priority: Tensor | None = None
) -> DispatchPlan:
    """Sort the (tokens, k) assignments by expert and apply the capacity.

    priority None ("position" policy): an over-full expert keeps its first C assignments in token order.
    priority (tokens, k) ("probability" policy): an over-full expert keeps its C highest-priority assignments
    (ties: token order).
    """
    num_tokens, k = expert_index.shape
    device = expert_index.device
    flat_expert = expert_index.reshape(-1)  # (tokens*k,)
    if priority is None:
        order = torch.argsort(flat_expert, stable=True)  # (tokens*k,) grouped by expert, token order inside
    else:
        by_priority = torch.argsort(priority.detach().reshape(-1), descending=True, stable=True)  # (tokens*k,)
        order = by_priority[torch.argsort(flat_expert[by_priority], stable=True)]  # grouped, priority inside
    sorted_expert = flat_expert[order]  # (tokens*k,) non-decreasing
    counts = torch.bincount(flat_expert, minlength=num_experts)  # (n_experts,)
    if capacity is None:
        assignment, expert = order, sorted_expert
        kept_counts = counts
        kept = torch.ones(num_tokens, k, dtype=torch.bool, device=device)
    else:
        starts = torch.cumsum(counts, 0) - counts  # (n_experts,) first sorted position of each expert
        rank = torch.arange(order.numel(), device=device) - starts[sorted_expert]  # (tokens*k,) rank in expert
        keep_sorted = rank < capacity  # (tokens*k,)
        assignment, expert = order[keep_sorted], sorted_expert[keep_sorted]
        kept_counts = counts.clamp(max=capacity)
        kept = torch.zeros(num_tokens * k, dtype=torch.bool, device=device)
        kept = kept.index_fill(0, assignment, True).reshape(num_tokens, k)
    sizes = tuple(int(n) for n in kept_counts.tolist())  # host sync: the slice lengths
    token = torch.div(assignment, k, rounding_mode="floor")  # (n_kept,)
    return DispatchPlan(token=token, assignment=assignment, expert=expert, sizes=sizes, counts=counts, kept=kept)


def expert_ffn(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, activation: str, dropout: float,
               training: bool) -> Tensor:
    """One expert: Linear d->d_ff, activation, activation dropout, Linear d_ff->d. x (n, d) -> (n, d)."""
    h = torch.addmm(b1, x, w1)  # (n, d_ff)
    h = F.relu(h) if activation == "relu" else F.gelu(h)
    h = F.dropout(h, p=dropout, training=training)
    return torch.addmm(b2, h, w2)  # (n, d)


def run_experts(x: Tensor, plan: DispatchPlan, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, activation: str,
                dropout: float, training: bool) -> Tensor:
    """Each expert on its contiguous slice of the kept assignments. x (tokens, d) -> (n_kept, d) in plan order.

    w1 (E, d, d_ff), b1 (E, d_ff), w2 (E, d_ff, d), b2 (E, d).
    """
    xs = x[plan.token]  # (n_kept, d) grouped by expert
    outs = []
    for e, piece in enumerate(torch.split(xs, list(plan.sizes))):
        if piece.shape[0] > 0:
            outs.append(expert_ffn(piece, w1[e], b1[e], w2[e], b2[e], activation, dropout, training))
    if not outs:
        return xs.new_zeros(0, x.shape[1])
    return torch.cat(outs, 0)  # (n_kept, d)


def all_experts(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, activation: str, dropout: float,
                training: bool) -> Tensor:
    """Every expert on every token (dense estimators). x (tokens, d) -> (tokens, E, d)."""
    h = torch.einsum("td,edf->tef", x, w1) + b1  # (tokens, E, d_ff)
    h = F.relu(h) if activation == "relu" else F.gelu(h)
    h = F.dropout(h, p=dropout, training=training)
    return torch.einsum("tef,efd->ted", h, w2) + b2  # (tokens, E, d)


def combine(expert_out: Tensor, plan: DispatchPlan, gate: Tensor, num_tokens: int) -> Tensor:
    """y_t = sum over token t's kept assignments of gate * expert output, in float32. -> (tokens, d) float32.

    expert_out (n_kept, d) in plan order; gate (tokens, k) float32 (carries the router gradient).
    """
    weight = gate.reshape(-1)[plan.assignment].unsqueeze(1)  # (n_kept, 1)
    weighted = expert_out.float() * weight  # (n_kept, d)
    y = weighted.new_zeros(num_tokens, expert_out.shape[1])  # (tokens, d)
    return y.index_add(0, plan.token, weighted)
