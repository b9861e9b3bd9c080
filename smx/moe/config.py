"""MoEConfig: the typed, frozen configuration of one MoE feed-forward layer (DESIGN.md section 5).

Every field is checked in __post_init__; a bad value raises ValueError naming the key as `moe.<field>`. The estimator
name and options are checked when the layer is built (smx.estimators.get() + est.validate(k, num_experts)), because
only the estimator knows its own options and which k it supports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

DROP_POLICIES = ("position", "probability")
BALANCE_SOURCES = ("routed", "reference")  # router softmax + routed experts | the estimator's reference inputs
ACTIVATIONS = ("relu", "gelu")
SCORES = ("softmax", "sigmoid")  # the router's gating scores
# an auxiliary balance loss | loss-free balancing by a selection bias | the balance loss with f from the counts of
# every micro-batch and rank of the update (global-batch balance, Qiu et al. 2025)
BALANCES = ("loss", "loss_free", "global_loss")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_capacity(key: str, value: Any) -> None:
    if value is None:
        return
    if not _is_number(value) or value <= 0:
        raise ValueError(f"moe.{key} must be a number > 0 or null (dropless); got {value!r}")


@dataclass(frozen=True)
class MoEConfig:
    num_experts: int
    k: int = 1
    estimator: str = "sparsemixer"
    estimator_options: dict[str, Any] = field(default_factory=dict)
    capacity_factor: float | None = None  # None: dropless in training
    eval_capacity_factor: float | None = None  # None: dropless in evaluation
    drop_policy: str = "position"  # which assignments an over-full expert keeps: "position" | "probability"
    output_scale: bool = False  # learnable omega (d_model,), init 1, multiplies the MoE output (also at inference)
    router_bias: bool = False
    input_jitter: float = 0.0  # eps of the multiplicative U(1-eps, 1+eps) noise on the ROUTER input (training only)
    activation: str = "relu"
    activation_dropout: float = 0.0
    balance_source: str = "routed"  # BALANCE_SOURCES: which probabilities and experts the balance loss uses
    shared_experts: int = 0  # always-on experts added to every token's routed output (DeepSeekMoE)
    expert_ffn_dim: int | None = None  # hidden size of routed and shared experts; None: the model's FFN size
    score: str = "softmax"  # SCORES
    balance: str = "loss"  # BALANCES; loss_free: the layer keeps a selection bias b, updated after every update
    bias_update_rate: float = 1e-3  # loss_free: u in b_i <- b_i + u * sign(mean(c) - c_i)

    def __post_init__(self) -> None:
        if not _is_int(self.num_experts) or self.num_experts < 1:
            raise ValueError(f"moe.num_experts must be an integer >= 1; got {self.num_experts!r}")
        if not _is_int(self.k) or self.k < 1:
            raise ValueError(f"moe.k must be an integer >= 1; got {self.k!r}")
        if self.k > self.num_experts:
            raise ValueError(f"moe.k={self.k} must be <= moe.num_experts={self.num_experts}")
        if not isinstance(self.estimator, str) or not self.estimator:
            raise ValueError(f"moe.estimator must be a non-empty estimator name; got {self.estimator!r}")
        if not isinstance(self.estimator_options, dict) or not all(isinstance(k, str) for k in self.estimator_options):
            raise ValueError(
                f"moe.estimator_options must be a mapping of option name to value; got {self.estimator_options!r}"
            )
        _check_capacity("capacity_factor", self.capacity_factor)
        _check_capacity("eval_capacity_factor", self.eval_capacity_factor)
        if self.drop_policy not in DROP_POLICIES:
            raise ValueError(f"moe.drop_policy must be one of {', '.join(DROP_POLICIES)}; got {self.drop_policy!r}")
        if not isinstance(self.output_scale, bool):
            raise ValueError(f"moe.output_scale must be true or false; got {self.output_scale!r}")
        if not isinstance(self.router_bias, bool):
            raise ValueError(f"moe.router_bias must be true or false; got {self.router_bias!r}")
        if not _is_number(self.input_jitter) or not 0 <= self.input_jitter < 1:
            raise ValueError(f"moe.input_jitter must be a number in [0, 1); got {self.input_jitter!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"moe.activation must be one of {', '.join(ACTIVATIONS)}; got {self.activation!r}")
        if self.balance_source not in BALANCE_SOURCES:
            raise ValueError(f"moe.balance_source must be one of {', '.join(BALANCE_SOURCES)}; "
                             f"got {self.balance_source!r}")
        if self.score not in SCORES:
            raise ValueError(f"moe.score must be one of {', '.join(SCORES)}; got {self.score!r}")
        if self.balance not in BALANCES:
            raise ValueError(f"moe.balance must be one of {', '.join(BALANCES)}; got {self.balance!r}")
        if not _is_number(self.bias_update_rate) or self.bias_update_rate <= 0:
            raise ValueError(f"moe.bias_update_rate must be a number > 0; got {self.bias_update_rate!r}")
        if not _is_int(self.shared_experts) or self.shared_experts < 0:
            raise ValueError(f"moe.shared_experts must be an integer >= 0; got {self.shared_experts!r}")
        if self.expert_ffn_dim is not None and (not _is_int(self.expert_ffn_dim) or self.expert_ffn_dim < 1):
            raise ValueError(f"moe.expert_ffn_dim must be an integer >= 1 or null; got {self.expert_ffn_dim!r}")
        if not _is_number(self.activation_dropout) or not 0 <= self.activation_dropout < 1:
            raise ValueError(f"moe.activation_dropout must be a number in [0, 1); got {self.activation_dropout!r}")
