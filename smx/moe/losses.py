"""Auxiliary losses and routing statistics of one MoE layer (DESIGN.md section 5). Pure functions.

Inputs cover the routed (non-padding) tokens only: the layer removes padding before routing, so padding never
enters a loss or a statistic. With zero routed tokens every loss and statistic is 0 (no NaN).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from smx.moe.dispatch import expert_counts


@dataclass(frozen=True)
class RoutingStats:
    """Detached tensors (no host synchronisation); call .item() / .tolist() to log them."""

    load: Tensor  # (n_experts,) float32 fraction of the routed assignments sent to each expert (sums to 1)
    dropped: Tensor  # () float32 fraction of the routed assignments dropped by the capacity
    entropy: Tensor  # () float32 router entropy -sum_i p_i log p_i (nats), mean over tokens
    unused: Tensor  # () int64 number of experts that received no assignment
    imbalance: Tensor  # () float32 max / mean expert load (1 = balanced, E = every assignment on one expert)
    no_gradient: Tensor  # () float32 fraction of the routed tokens whose router gets no task gradient
    logit_rms: Tensor  # () float32 router-logit scale sqrt(mean z^2) over tokens and experts


def assignment_fractions(expert_index: Tensor, num_experts: int) -> Tensor:
    """f_i = (assignments routed to expert i) / (tokens * k), before any capacity drop. (tokens, k) -> (E,) f32."""
    return expert_counts(expert_index, num_experts).float() / max(expert_index.numel(), 1)


def load_balance_loss(probs: Tensor, expert_index: Tensor) -> Tensor:
    """Switch load balance: E * sum_i f_i P_i; f = routed fraction (no gradient), P = mean router prob over tokens.

    probs (tokens, E) float32, expert_index (tokens, k). Equals 1 under perfectly uniform routing.
    """
    num_tokens, num_experts = probs.shape
    f = assignment_fractions(expert_index, num_experts)  # (n_experts,)
    mean_prob = probs.sum(0) / max(num_tokens, 1)  # (n_experts,)
    return num_experts * (f * mean_prob).sum()


BALANCE_REDUCTIONS = ("token_mean", "batch_sum")


def balance_term(balances: Tensor, weight: float, reduction: str, sample_size: float) -> Tensor:
    """The balance term added to a SUMMED task loss (fairseq then divides the gradient by sample_size).

    balances (layers,) per-MoE-layer balance losses of one forward.
    token_mean (Switch paper):          sample_size * weight * mean_layers(B)  -> per token: weight * mean(B)
    batch_sum (SparseMixer's fairseq example, translation_switch.py _get_loss):
                                        weight * sum_layers(B)                 -> per token: weight * sum(B) / size
    """
    if reduction == "token_mean":
        return sample_size * weight * balances.mean()
    if reduction == "batch_sum":
        return weight * balances.sum()
    raise ValueError(f"balance reduction must be one of {', '.join(BALANCE_REDUCTIONS)}; got {reduction!r}")


def z_loss(logits: Tensor) -> Tensor:
    """Router z-loss mean over tokens of logsumexp(z)^2. logits (tokens, E) -> ()."""
    lse = torch.logsumexp(logits.float(), dim=-1)  # (tokens,)
    return lse.square().sum() / max(logits.shape[0], 1)


def router_entropy(probs: Tensor) -> Tensor:
    """Mean over tokens of -sum_i p_i log p_i (0 log 0 = 0). (tokens, E) -> ()."""
    plogp = torch.special.xlogy(probs, probs)  # (tokens, E)
    return -plogp.sum() / max(probs.shape[0], 1)


def routing_stats(probs: Tensor, expert_index: Tensor, kept: Tensor, logits: Tensor | None = None,
                  no_gradient: Tensor | None = None) -> RoutingStats:
    """probs (tokens, E), expert_index (tokens, k), kept (tokens, k) bool (False = dropped by the capacity), logits
    (tokens, E) the router's, no_gradient (tokens,) bool: tokens whose router gets no task gradient (None: none)."""
    with torch.no_grad():
        num_tokens, num_experts = probs.shape
        counts = expert_counts(expert_index, num_experts)  # (n_experts,)
        load = counts.float() / max(expert_index.numel(), 1)  # (n_experts,)
        dropped = (~kept).sum().float() / max(kept.numel(), 1)
        zero = probs.new_zeros(())
        return RoutingStats(
            load=load,
            dropped=dropped,
            entropy=router_entropy(probs.float()),
            unused=(counts == 0).sum(),
            imbalance=load.max() * num_experts if num_tokens else zero,
            no_gradient=zero if no_gradient is None else no_gradient.float().sum() / max(num_tokens, 1),
            logit_rms=zero if logits is None or not num_tokens else logits.detach().float().square().mean().sqrt(),
        )
