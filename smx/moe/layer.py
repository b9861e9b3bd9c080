"""MoEFeedForward: a Switch Transformer feed-forward layer with a pluggable router gradient estimator.

Per call: drop padding tokens, route them in float32 (Router), let the estimator pick experts and gates (Routing),
dispatch by index to the experts (FFNs with stacked weights), combine gate x expert output, then add the estimator's
extra terms: dense estimators get sum_i dense_weight_i E_i(x) over every expert, Default MoE gets
default_weight @ default_vectors (an EMA of each expert's mean output, updated before use in training, frozen in
evaluation). Shared experts (DeepSeekMoE) are added ungated for every token: y = omega * routed + sum_s S_s(x);
routed and shared experts have hidden size expert_ffn_dim (fine-grained experts), else the model's FFN size. The
balance loss takes the router softmax and the routed experts, or with balance_source "reference" what the
estimator's reference code uses (Estimator.balance_inputs); with balance global_loss its f counts every micro-batch
and rank of the update so far. ReMoE (a `variable_k` estimator) routes each token to the experts with a nonzero
ReLU gate (Routing.active; the plan holds those pairs only) and returns the penalty lambda * L1 of its gates, lambda
from the ReluControl its model's layers share. Training uses capacity_factor, evaluation
eval_capacity_factor (None = dropless); `self.training` also selects the estimator's
training or (deterministic) evaluation routing.

Host synchronisation (`sync_free`): on the CPU the layer removes padding by index and cuts dropped assignments out
of the plan (host-sized, free there); on accelerators it routes every position with a `valid` mask and uses a
static plan (plan_dispatch_static), so that no shape depends on the routing and nothing waits for the host. Both give
the same values for deterministic routing; sampling estimators draw their noise for every position in the second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from smx import estimators
from smx.estimators.base import Estimator, Routing
from smx.moe.config import MoEConfig
from smx.moe.dispatch import (DispatchPlan, all_experts, combine, expert_capacity, expert_capacity_on_device,
                              expert_counts, plan_dispatch, plan_dispatch_static, run_experts)
from smx.moe.losses import RoutingStats, load_balance_loss, relu_l1_balance, routing_stats, z_loss
from smx.moe.per_update import PerUpdate, ReluControl, distributed
from smx.moe.router import Router


@dataclass(frozen=True)
class MoEOutput:
    y: Tensor  # (..., d_model) in the input dtype; 0 for padding and fully dropped tokens
    balance_loss: Tensor  # () float32 (0 for ReMoE, which has none)
    z_loss: Tensor  # () float32
    stats: RoutingStats
    penalty: Tensor  # () float32 a loss the layer weights itself (ReMoE: lambda * L1; 0 otherwise), per token

    def aux_loss(self, balance_weight: float = 0.0, zloss_weight: float = 0.0) -> Tensor:
        """balance_weight * balance + zloss_weight * z-loss + penalty: the layer's differentiable auxiliary term
        per token (it always has a gradient path: the z-loss's, even at weight 0)."""
        return balance_weight * self.balance_loss + zloss_weight * self.z_loss + self.penalty


def build_estimator(config: MoEConfig) -> Estimator:
    """smx.estimators.get(name, **options), validated for (k, num_experts); errors name the moe.* key."""
    try:
        est = estimators.get(config.estimator, **config.estimator_options)
    except (TypeError, ValueError) as err:  # unknown name, unknown option, bad option value
        key = "moe.estimator_options" if config.estimator in estimators.names() else "moe.estimator"
        raise ValueError(f"{key}: {err}") from err
    est.validate(config.k, config.num_experts, config.score, config.balance)  # messages name moe.k / score / balance
    return est


def ema_update(vectors: Tensor, initialized: Tensor, sums: Tensor, counts: Tensor, beta: float) -> None:
    """In place, no grad: rows with counts > 0 move to beta * old + (1 - beta) * mean (first time: the mean).

    vectors (E, d) float32, initialized (E,) bool, sums (E, d) float32 summed expert outputs, counts (E,).
    Rows with no tokens this step are left unchanged.
    """
    seen = counts > 0  # (E,)
    mean = sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype)  # (E, d)
    blended = torch.where(initialized.unsqueeze(1), beta * vectors + (1 - beta) * mean, mean)  # (E, d)
    vectors.copy_(torch.where(seen.unsqueeze(1), blended, vectors))
    initialized.logical_or_(seen)


@torch.no_grad()
def reset_ffn(w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> None:
    """Like nn.Linear, per expert: weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)). w1 (n, d, d_ff)."""
    bound1, bound2 = 1 / math.sqrt(w1.shape[1]), 1 / math.sqrt(w1.shape[2])
    w1.uniform_(-bound1, bound1)
    b1.uniform_(-bound1, bound1)
    w2.uniform_(-bound2, bound2)
    b2.uniform_(-bound2, bound2)


def relu_control_for(config: MoEConfig) -> ReluControl | None:
    """The ReluControl that every MoE layer of one model built from `config` shares (ReMoE), else None."""
    est = build_estimator(config)
    if not est.variable_k:
        return None
    return ReluControl(config.num_experts, config.k, est.l1_coeff, est.l1_multiplier)


def loss_free_step(counts: Tensor, rate: float) -> Tensor:
    """u * sign(mean(c) - c): the loss-free balancing bias update from one update's expert counts (E,)."""
    return rate * torch.sign(counts.mean() - counts)


class SharedExperts(nn.Module):
    """S always-on experts (DeepSeekMoE's shared experts): x (T, d) -> sum_s FFN_s(x) (T, d) float32, no gate."""

    def __init__(self, count: int, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(count, d_model, d_ff))  # (S, d, d_ff)
        self.b1 = nn.Parameter(torch.empty(count, d_ff))  # (S, d_ff)
        self.w2 = nn.Parameter(torch.empty(count, d_ff, d_model))  # (S, d_ff, d)
        self.b2 = nn.Parameter(torch.empty(count, d_model))  # (S, d)

    def reset_parameters(self) -> None:
        reset_ffn(self.w1, self.b1, self.w2, self.b2)

    def forward(self, x: Tensor, activation: str, activation_dropout: float, training: bool) -> Tensor:
        out = all_experts(x, self.w1, self.b1, self.w2, self.b2, activation, activation_dropout, training)  # (T,S,d)
        return out.float().sum(dim=1)  # (T, d)


class MoEFeedForward(PerUpdate):
    """forward(x (..., d_model), padding_mask (...,) bool True = pad, generator) -> MoEOutput.

    `estimator` overrides config.estimator / config.estimator_options with a ready instance (tests, diagnostics);
    it is still validated for (k, num_experts). `relu_control`: the ReluControl shared by a model's layers (ReMoE;
    relu_control_for); None: the layer makes its own.
    """

    def __init__(self, d_model: int, d_ff: int, config: MoEConfig, *, estimator: Estimator | None = None,
                 relu_control: ReluControl | None = None) -> None:
        super().__init__()
        if not isinstance(config, MoEConfig):
            raise TypeError(f"config must be a MoEConfig; got {type(config).__name__}")
        for key, value in (("d_model", d_model), ("d_ff", d_ff)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MoE {key} must be an integer >= 1; got {value!r}")
        if estimator is None:
            estimator = build_estimator(config)
        else:
            estimator.validate(config.k, config.num_experts, config.score, config.balance)
        self.config = config
        self.estimator = estimator
        self.expert_backend = "auto"  # smx.moe.dispatch.BACKENDS: how the experts run (same values, speed only)
        self.sync_free: bool | None = None  # None: on accelerators only (see the module docstring)
        self.d_model = d_model
        self.d_ff = config.expert_ffn_dim or d_ff  # each expert's hidden size
        num_experts, d_ff = config.num_experts, self.d_ff
        self.router = Router(d_model, num_experts, bias=config.router_bias, input_jitter=config.input_jitter)
        self.w1 = nn.Parameter(torch.empty(num_experts, d_model, d_ff))  # (E, d, d_ff)
        self.b1 = nn.Parameter(torch.empty(num_experts, d_ff))  # (E, d_ff)
        self.w2 = nn.Parameter(torch.empty(num_experts, d_ff, d_model))  # (E, d_ff, d)
        self.b2 = nn.Parameter(torch.empty(num_experts, d_model))  # (E, d)
        self.shared = SharedExperts(config.shared_experts, d_model, d_ff) if config.shared_experts else None
        self.omega = nn.Parameter(torch.ones(d_model)) if config.output_scale else None  # (d,)
        if estimator.uses_default_vectors:
            self.register_buffer("default_vectors", torch.zeros(num_experts, d_model, dtype=torch.float32))
            self.register_buffer("default_initialized", torch.zeros(num_experts, dtype=torch.bool))
        else:
            self.default_vectors = None
            self.default_initialized = None
        if config.balance == "loss_free":  # all in checkpoints, so that a resumed run selects as an uninterrupted one
            self.register_buffer("selection_bias", torch.zeros(num_experts, dtype=torch.float32))  # (E,) b
            self.register_buffer("pending_counts", torch.zeros(num_experts, dtype=torch.long))  # (E,) c so far
        else:
            self.selection_bias = None
        if config.balance == "global_loss":  # this update's counts so far, all ranks; last entry: assignments
            self.register_buffer("global_counts", torch.zeros(num_experts + 1, dtype=torch.long), persistent=False)
        else:
            self.global_counts = None
        if config.balance != "loss":
            self.track_updates()  # counted_update: the update the pending counts belong to
        if estimator.variable_k:
            if relu_control is None:
                relu_control = ReluControl(num_experts, config.k, estimator.l1_coeff, estimator.l1_multiplier)
            elif (relu_control.num_experts, relu_control.k) != (num_experts, config.k):
                raise ValueError(f"relu_control is for E={relu_control.num_experts}, k={relu_control.k}; this layer "
                                 f"has E={num_experts}, k={config.k}")
        self.relu_control = relu_control if estimator.variable_k else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset_ffn(self.w1, self.b1, self.w2, self.b2)
        if self.shared is not None:
            self.shared.reset_parameters()

    def extra_repr(self) -> str:
        c = self.config
        return (f"d_model={self.d_model}, d_ff={self.d_ff}, num_experts={c.num_experts}, k={c.k}, "
                f"estimator={self.estimator.name!r}, capacity_factor={c.capacity_factor}, "
                f"eval_capacity_factor={c.eval_capacity_factor}, drop_policy={c.drop_policy!r}, "
                f"shared_experts={c.shared_experts}")

    def forward(self, x: Tensor, padding_mask: Tensor | None = None,
                generator: torch.Generator | None = None) -> MoEOutput:
        if x.shape[-1] != self.d_model:
            raise ValueError(f"MoE input last dimension must be d_model={self.d_model}; got shape {tuple(x.shape)}")
        flat = x.reshape(-1, self.d_model)  # (N, d) all positions
        if padding_mask is not None and padding_mask.shape != x.shape[:-1]:
            raise ValueError(f"padding_mask shape {tuple(padding_mask.shape)} must equal x.shape[:-1] = "
                             f"{tuple(x.shape[:-1])}")
        if self.sync_free if self.sync_free is not None else x.device.type != "cpu":
            valid = None if padding_mask is None else ~padding_mask.reshape(-1).bool()  # (N,)
            y, balance, zl, stats, penalty = self._moe(flat, generator, valid)  # (N, d), pads 0
            return MoEOutput(y=y.to(x.dtype).reshape(x.shape), balance_loss=balance, z_loss=zl, stats=stats,
                             penalty=penalty)
        if padding_mask is None:
            routed_index = None
            tokens = flat  # (T, d)
        else:
            routed_index = (~padding_mask.reshape(-1).bool()).nonzero().squeeze(1)  # (T,)
            tokens = flat[routed_index]  # (T, d)
        y, balance, zl, stats, penalty = self._moe(tokens, generator)  # y (T, d) float32
        if routed_index is not None:
            y = y.new_zeros(flat.shape[0], self.d_model).index_copy(0, routed_index, y)  # (N, d), pads 0
        return MoEOutput(y=y.to(x.dtype).reshape(x.shape), balance_loss=balance, z_loss=zl, stats=stats,
                         penalty=penalty)

    def _moe(self, tokens: Tensor, generator: torch.Generator | None,
             valid: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, RoutingStats, Tensor]:
        """tokens (T, d) -> (y (T, d) float32, balance, z-loss, stats, penalty). valid (T,) bool (False = padding): the
        sync-free form, with a static plan (also when valid is None); None with compact tokens: the CPU form."""
        c, est = self.config, self.estimator
        static = valid is not None or (self.sync_free if self.sync_free is not None else tokens.device.type != "cpu")
        num_tokens = tokens.shape[0]
        logits = self.router(tokens, generator)  # (T, E) float32
        extra = {} if c.score == "softmax" and self.selection_bias is None else \
            {"score": c.score, "bias": None if self.selection_bias is None else self.selection_bias.detach()}
        routing: Routing = est(logits, k=c.k, training=self.training, generator=generator, **extra)
        factor = c.capacity_factor if self.training else c.eval_capacity_factor
        if factor is not None and valid is not None:  # the routed count stays on the device
            capacity = expert_capacity_on_device(valid.sum(), c.num_experts, c.k, factor)
        else:
            capacity = expert_capacity(num_tokens, c.num_experts, c.k, factor)
        priority = None
        if c.drop_policy == "probability" and capacity is not None:  # (T, k) router probability of each choice
            priority = routing.gate.detach() if est.variable_k else routing.probs.gather(1, routing.expert_index)
        if static:
            plan = plan_dispatch_static(routing.expert_index, c.num_experts, capacity, priority, valid,
                                        active=routing.active)
        else:
            plan = plan_dispatch(routing.expert_index, c.num_experts, capacity, priority, active=routing.active)
        if self.selection_bias is not None and self.training:
            self.pending_counts += plan.counts  # (E,) routed assignments, before any capacity drop
        expert_in = tokens.to(self.w1.dtype)  # (T, d) the experts see the tokens unjittered
        ffn = (self.w1, self.b1, self.w2, self.b2, c.activation, c.activation_dropout, self.training)
        all_out = None
        if est.dense:
            all_out = all_experts(expert_in, *ffn)  # (T, E, d)
            expert_out = all_out[plan.token, plan.expert]  # (rows, d)
        else:
            expert_out = run_experts(expert_in, plan, *ffn, backend=self.expert_backend)  # (rows, d)
        y = combine(expert_out, plan, routing.gate, num_tokens)  # (T, d) float32
        if all_out is not None and routing.dense_weight is not None:
            y = y + torch.einsum("te,ted->td", routing.dense_weight.float(), all_out.float())
        if est.uses_default_vectors and routing.default_weight is not None:
            if self.training:  # evaluation uses the same forward with the vectors frozen
                self._update_default_vectors(expert_out, plan)
            y = y + routing.default_weight.float() @ self.default_vectors.detach().float()  # (T, d)
        if self.omega is not None:
            y = y * self.omega.float()
        if self.shared is not None:
            y = y + self.shared(expert_in, c.activation, c.activation_dropout, self.training)  # (T, d)
        if valid is not None:
            y = torch.where(valid.unsqueeze(1), y, 0)  # padding positions: 0, and no gradient
        penalty = balance = logits.new_zeros(())  # ReMoE has no balance loss: lambda * L1 balances and sparsifies
        if est.variable_k and self.training:
            self.relu_control.count(routing.active, valid)
            penalty = self.relu_control.coefficient() * relu_l1_balance(routing.gate, routing.active, c.k, valid)
        elif est.balance_loss:
            balance = self._balance_loss(logits, routing, valid)
        zl = z_loss(logits, valid)
        stats = routing_stats(routing.probs, routing.expert_index, plan.kept, logits,
                              est.no_gradient_tokens(logits, routing, c.k) if self.training else None, valid,
                              routing.active)
        return y, balance, zl, stats, penalty

    def _balance_loss(self, logits: Tensor, routing: Routing, valid: Tensor | None) -> Tensor:
        """E * sum_i f_i P_i on the routed (or the estimator's reference) inputs; with balance global_loss in
        training, f from the counts of this update's micro-batches so far, summed over every rank (Qiu et al.
        2025): one all-reduce of E + 1 numbers per layer and micro-batch, as Megatron-core's global_aux_loss."""
        c, est = self.config, self.estimator
        probs, index = routing.probs, routing.expert_index
        if c.balance_source == "reference":
            probs, index = est.balance_inputs(logits, routing, c.k)
        fractions = None
        if self.global_counts is not None and self.training:
            with torch.no_grad():
                routed = index.shape[0] if valid is None else valid.sum()
                local = torch.cat([expert_counts(index, c.num_experts, valid),
                                   torch.as_tensor(routed * index.shape[1], device=index.device).reshape(1)])
                if distributed():
                    torch.distributed.all_reduce(local)
                self.global_counts += local
                fractions = self.global_counts[:-1].float() / self.global_counts[-1].clamp(min=1).float()  # (E,)
        return load_balance_loss(probs.float(), index, valid, fractions)

    @torch.no_grad()
    def set_num_updates(self, num_updates: int) -> None:
        """fairseq calls this before every micro-batch with the update it belongs to (FairseqTask.train_step). When a
        new update starts: loss_free: the expert counts c of the previous one (all its micro-batches, every rank)
        move the selection bias, b_i <- b_i + u * sign(mean(c) - c_i) (Wang et al. 2024, Algorithm 1); global_loss:
        the running counts start again; ReMoE: the shared L1 coefficient takes its step (ReluControl, idempotent)."""
        if self.relu_control is not None:
            self.relu_control.set_num_updates(num_updates)
        if self.config.balance == "loss" or not self.starts_update(num_updates):
            return
        if self.global_counts is not None:
            self.global_counts.zero_()
            return
        counts = self.pending_counts.clone()  # (E,) int64: never cast by .half(), never overflows
        if distributed():
            torch.distributed.all_reduce(counts)
        step = loss_free_step(counts.double(), self.config.bias_update_rate)  # (E,); 0 where no token was counted
        self.selection_bias.copy_(self.selection_bias.double() + step * (counts.sum() > 0))
        self.pending_counts.zero_()

    @torch.no_grad()
    def _update_default_vectors(self, expert_out: Tensor, plan: DispatchPlan) -> None:
        """EMA (beta = estimator.beta) of each expert's mean output over the tokens it computed this step."""
        num_experts = self.config.num_experts
        out = expert_out.detach().float()  # (rows, d); a static plan's trailing rows count for no expert
        sums = out.new_zeros(num_experts, self.d_model)
        if plan.row_valid is not None:
            out = torch.where(plan.row_valid.unsqueeze(1), out, 0)
        sums.index_add_(0, plan.expert, out)  # (E, d)
        counts = expert_counts(plan.expert.unsqueeze(1), num_experts, plan.row_valid)  # (E,)
        vectors = self.default_vectors.float()  # a copy if the module was cast to another dtype
        ema_update(vectors, self.default_initialized, sums, counts, float(self.estimator.beta))
        if vectors is not self.default_vectors:
            self.default_vectors.copy_(vectors)
