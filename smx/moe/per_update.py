"""State that changes once per optimizer update, from counts gathered over all of that update's micro-batches.

fairseq calls model.set_num_updates(n) before every micro-batch with the update it belongs to
(FairseqTask.train_step), and every module that has the method gets it (each shared module once). `PerUpdate`
turns that into "a new update starts" exactly once per update, also across a checkpoint resume; `ReluControl` is
ReMoE's adaptive L1 coefficient, one per model, shared by all of its MoE layers (thu-ml/ReMoE keeps it in
Megatron's config object, which every layer shares).

Every count is an int64 buffer: never cast by .half(), exact at any size, in the checkpoints (a resumed run
continues as the uninterrupted one), and reduced over the data-parallel ranks with one all-reduce per update.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class PerUpdate(nn.Module):
    """Mixin: `counted_update` (a buffer: the update the pending counts belong to) and starts_update(n)."""

    def track_updates(self) -> None:
        self.register_buffer("counted_update", torch.tensor(-1, dtype=torch.long))
        self._counted_update_host: int | None = None  # host copy (None: read the buffer once)

    def starts_update(self, num_updates: int) -> bool:
        """True once per update: on the first micro-batch of update `num_updates` (no host sync after the first)."""
        if self._counted_update_host is None:  # once per process (and after a state-dict load): one host read
            self._counted_update_host = int(self.counted_update)
        if self._counted_update_host == num_updates:
            return False
        self.counted_update.fill_(num_updates)
        self._counted_update_host = num_updates
        return True

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._counted_update_host = None  # the loaded counted_update is read again at the next update


def relu_control_step(nonzero: Tensor, pairs: Tensor, num_experts: int, k: int) -> Tensor:
    """sign((1 - k/E) - S) with S = 1 - nonzero / pairs the sparsity reached, in integers: sign(E * nonzero - k *
    pairs) (exact; 0 when nothing was counted). () int64 tensors -> () int64 in {-1, 0, 1}."""
    return torch.sign(num_experts * nonzero - k * pairs)


class ReluControl(PerUpdate):
    """ReMoE's L1 coefficient lambda = l1_coeff * l1_multiplier^n (Wang et al. 2025, eq. 6:
    lambda_{i+1} = lambda_i * alpha^sign((1 - k/E) - S_i)), n an integer buffer moved by one step per update.

    S_i: the fraction of zero gates over every (routed token, expert) pair of every MoE layer sharing this control,
    every micro-batch of update i and every rank (pooled counts; the reference averages the per-layer and
    per-micro-batch fractions, the same value when they all route as many tokens).
    """

    def __init__(self, num_experts: int, k: int, l1_coeff: float, l1_multiplier: float) -> None:
        super().__init__()
        self.num_experts, self.k = num_experts, k
        self.l1_coeff, self.l1_multiplier = float(l1_coeff), float(l1_multiplier)
        self.register_buffer("exponent", torch.tensor(0, dtype=torch.long))  # n
        self.register_buffer("nonzero", torch.tensor(0, dtype=torch.long))  # nonzero gates of the pending update
        self.register_buffer("pairs", torch.tensor(0, dtype=torch.long))  # (routed token, expert) pairs counted
        self.track_updates()

    def extra_repr(self) -> str:
        return (f"num_experts={self.num_experts}, k={self.k}, l1_coeff={self.l1_coeff:g}, "
                f"l1_multiplier={self.l1_multiplier:g}")

    def coefficient(self) -> Tensor:
        """lambda, () float32 on the buffers' device (no host sync)."""
        return (self.l1_coeff * torch.pow(torch.tensor(self.l1_multiplier, dtype=torch.float64,
                                                       device=self.exponent.device), self.exponent)).float()

    @torch.no_grad()
    def count(self, active: Tensor, valid: Tensor | None) -> None:
        """Add one layer's (tokens, E) nonzero-gate mask (valid (tokens,): the routed tokens) to the pending update."""
        routed = active if valid is None else active & valid.unsqueeze(1)
        tokens = active.shape[0] if valid is None else valid.sum()
        self.nonzero += routed.sum()
        self.pairs += tokens * active.shape[1]

    @torch.no_grad()
    def set_num_updates(self, num_updates: int) -> None:
        """At the first micro-batch of a new update: n += sign(...) from the previous update's counts."""
        if not self.starts_update(num_updates):
            return
        counts = torch.stack([self.nonzero, self.pairs])  # (2,) int64
        if distributed():
            torch.distributed.all_reduce(counts)
        self.exponent += relu_control_step(counts[0], counts[1], self.num_experts, self.k)
        self.nonzero.zero_()
        self.pairs.zero_()
