"""Auxiliary losses and routing statistics of one MoE layer (DESIGN.md section 5). Pure functions.

Padding never enters a loss or a statistic: on the CPU the layer removes it before routing; on accelerators it routes
every position (no host synchronisation) and passes `valid` (tokens,) bool, False = padding, which every function
here takes: means are then over the valid tokens only. With zero routed tokens every loss and statistic is 0 (no NaN).
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
    active: Tensor  # () float32 experts per routed token, before capacity drops (k for top-k; ReMoE's varies)
    sparsity: Tensor  # () float32 1 - active / E: the fraction of (token, expert) pairs not computed


def token_weights(num_tokens: int, valid: Tensor | None, like: Tensor) -> tuple[Tensor | None, Tensor | int]:
    """(w (tokens,) float32 or None, routed token count clamped to >= 1: an int, or () tensor when valid is given)."""
    if valid is None:
        return None, max(num_tokens, 1)
    return valid.to(like.dtype), valid.sum().clamp(min=1)


def assignment_fractions(expert_index: Tensor, num_experts: int, valid: Tensor | None = None,
                         active: Tensor | None = None) -> Tensor:
    """f_i = (assignments routed to expert i) / (routed assignments), before any capacity drop: the denominator is
    tokens * k, or with active (tokens, k) bool (variable-count routing) the active assignments. -> (E,) f32."""
    counts = expert_counts(expert_index, num_experts, valid, active).float()  # (E,)
    if active is not None:
        return counts / counts.sum().clamp(min=1)
    _, count = token_weights(expert_index.shape[0], valid, expert_index)
    return counts / (count * expert_index.shape[1])


def load_balance_loss(probs: Tensor, expert_index: Tensor, valid: Tensor | None = None,
                      fractions: Tensor | None = None) -> Tensor:
    """Switch load balance: E * sum_i f_i P_i; f = routed fraction (no gradient), P = mean router prob over tokens.

    probs (tokens, E) float32, expert_index (tokens, k). Equals 1 under perfectly uniform routing. fractions (E,):
    f given by the caller (the global-batch balance loss: f from the counts of every rank and micro-batch).
    """
    num_tokens, num_experts = probs.shape
    f = assignment_fractions(expert_index, num_experts, valid) if fractions is None else fractions  # (E,)
    w, count = token_weights(num_tokens, valid, probs)
    mean_prob = (probs if w is None else probs * w.unsqueeze(1)).sum(0) / count  # (n_experts,)
    return num_experts * (f * mean_prob).sum()


def relu_l1_balance(gate: Tensor, active: Tensor, k: int, valid: Tensor | None = None) -> Tensor:
    """ReMoE's load-balanced L1 of the ReLU gates: the Switch formula on g with f_e = n_e / (T * k),
    E * sum_e mean_t(g_te) * n_e / (T * k), n_e the routed tokens with g_te > 0 (no gradient), T the routed tokens.

    gate (tokens, E) float32 ReLU outputs, active (tokens, E) bool. Equals sum_e mean_t(g_te) when every expert gets
    k/E of the tokens (the plain L1, per token); thu-ml/ReMoE applies Megatron's switch_load_balancing_loss_func to
    (g, n) exactly so.
    """
    num_tokens, num_experts = gate.shape
    w, count = token_weights(num_tokens, valid, gate)
    n = (active if w is None else active & valid.unsqueeze(1)).sum(0).float()  # (E,)
    mean_gate = (gate if w is None else gate * w.unsqueeze(1)).sum(0) / count  # (E,)
    return num_experts * (mean_gate * n).sum() / (count * k)


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


def token_mean(values: Tensor, valid: Tensor | None) -> Tensor:
    """Mean of (tokens,) values over the valid tokens (0 when there are none)."""
    w, count = token_weights(values.shape[0], valid, values)
    return (values if w is None else values * w).sum() / count


def z_loss(logits: Tensor, valid: Tensor | None = None) -> Tensor:
    """Router z-loss mean over tokens of logsumexp(z)^2. logits (tokens, E) -> ()."""
    return token_mean(torch.logsumexp(logits.float(), dim=-1).square(), valid)


def router_entropy(probs: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean over tokens of -sum_i p_i log p_i (0 log 0 = 0). (tokens, E) -> ()."""
    return token_mean(-torch.special.xlogy(probs, probs).sum(dim=1), valid)


def routing_stats(probs: Tensor, expert_index: Tensor, kept: Tensor, logits: Tensor | None = None,
                  no_gradient: Tensor | None = None, valid: Tensor | None = None,
                  active: Tensor | None = None) -> RoutingStats:
    """probs (tokens, E), expert_index (tokens, k), kept (tokens, k) bool (False = dropped by the capacity), logits
    (tokens, E) the router's, no_gradient (tokens,) bool: tokens whose router gets no task gradient (None: none),
    valid (tokens,) bool (None: every token is routed), active (tokens, k) bool (variable-count routing: the
    assignments that exist; None: all)."""
    with torch.no_grad():
        num_tokens, num_experts = probs.shape
        counts = expert_counts(expert_index, num_experts, valid, active)  # (n_experts,)
        load = assignment_fractions(expert_index, num_experts, valid, active)  # (n_experts,)
        routed = torch.ones_like(kept) if active is None else active  # (tokens, k)
        per_token = routed.float().sum(1)  # (tokens,) experts each token is routed to, before any drop
        dropped = (routed & ~kept).float().sum(1)  # (tokens,)
        zero = probs.new_zeros(())
        any_routed = num_tokens > 0 if valid is None else valid.any()
        experts_per_token = token_mean(per_token, valid)
        return RoutingStats(
            load=load,
            dropped=token_mean(dropped, valid) / experts_per_token.clamp(min=1),
            entropy=router_entropy(probs.float(), valid),
            unused=(counts == 0).sum(),
            imbalance=torch.where(torch.as_tensor(any_routed, device=load.device), load.max() * num_experts, zero)
            if num_tokens else zero,
            no_gradient=zero if no_gradient is None else token_mean(no_gradient.float(), valid),
            logit_rms=zero if logits is None or not num_tokens
            else token_mean(logits.detach().float().square().mean(1), valid).sqrt(),
            active=experts_per_token,
            sparsity=1 - experts_per_token / num_experts,
        )
