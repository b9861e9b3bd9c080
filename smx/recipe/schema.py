"""The recipe schema: one frozen dataclass per YAML section (DESIGN.md section 7).

Each section's __post_init__ raises smx.errors.Problems listing every problem of that section as (key, message)
pairs (keys relative to the section). smx.recipe.recipes adds the section prefix, collects problems across sections, checks the
cross-section rules, and raises one UserError. Field types are checked by smx.recipe.parse.coerce before construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from smx.engine.contract import ARCH_LAYERS
from smx.errors import Problems

LM_ARCHS = tuple(ARCH_LAYERS["language_modeling"])


def _raise(problems: list[tuple[str, str]]) -> None:
    if problems:
        raise Problems(problems)


def _fraction(problems: list[tuple[str, str]], key: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        problems.append((key, f"{value} must be in [0, 1)"))


def _positive(problems: list[tuple[str, str]], key: str, value: float | int, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        problems.append((key, f"{value} must be {'>= 0' if allow_zero else '> 0'}"))


@dataclass(frozen=True)
class DataConfig:
    dataset: str  # a data_prep dataset name (`smx data list`)
    root: str = "data"  # prepared datasets live in <root>/<dataset>/bin
    dir: str | None = None  # binarized directory to use instead of <root>/<dataset>/bin
    source_lang: str | None = None  # translation; None = the dataset's own
    target_lang: str | None = None
    tokens_per_sample: int = 512  # language modeling: block length
    sample_break_mode: Literal["none", "complete", "complete_doc", "eos"] = "none"  # language modeling

    def __post_init__(self) -> None:
        p: list[tuple[str, str]] = []
        if not self.dataset:
            p.append(("dataset", "must not be empty"))
        for key in ("root", "dir"):  # fairseq splits its data argument on ':' (shards)
            if ":" in (getattr(self, key) or ""):
                p.append((key, f"{getattr(self, key)!r} contains ':', which fairseq reads as a shard separator"))
        _positive(p, "tokens_per_sample", self.tokens_per_sample)
        _raise(p)


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["tiny", "small", "base", "big"] = "base"  # smx_switch_transformer_<arch> / smx_switch_lm_<arch>
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    activation_fn: Literal["relu", "gelu"] = "relu"
    share_all_embeddings: bool = True  # translation: one joined embedding; LM: tie input and output embeddings
    # Optional size overrides; null = the arch's own value.
    embed_dim: int | None = None
    ffn_dim: int | None = None
    attention_heads: int | None = None
    encoder_layers: int | None = None  # number of layers (moe.encoder_layers lists which of them are MoE)
    decoder_layers: int | None = None

    def __post_init__(self) -> None:
        p: list[tuple[str, str]] = []
        for key in ("dropout", "attention_dropout", "activation_dropout"):
            _fraction(p, key, getattr(self, key))
        for key in ("embed_dim", "ffn_dim", "attention_heads", "encoder_layers", "decoder_layers"):
            value = getattr(self, key)
            if value is not None:
                _positive(p, key, value)
        if self.embed_dim and self.attention_heads and self.embed_dim % self.attention_heads:
            p.append(("embed_dim", f"{self.embed_dim} is not divisible by attention_heads={self.attention_heads}"))
        _raise(p)


@dataclass(frozen=True)
class MoESection:
    """The recipe's moe section (smx.moe.MoEConfig is the layer's own config, built from it by the plugin)."""

    num_experts: int = 4
    k: int = 1
    encoder_layers: tuple[int, ...] = (0, 2, 4)  # indices of the encoder layers whose FFN is an MoE
    decoder_layers: tuple[int, ...] = (0, 2, 4)
    capacity_factor: float | None = None  # null = dropless
    eval_capacity_factor: float | None = None  # null = dropless at evaluation
    drop_policy: Literal["position", "probability"] = "position"
    output_scale: bool = False  # SparseMixer's learnable output scale omega (estimator-independent switch)
    router_bias: bool = False
    input_jitter: float = 0.0  # multiplicative router-input jitter U(1-eps, 1+eps), training only
    balance_weight: float = 0.01  # loss += balance_weight * load-balance loss, reduced by balance_reduction
    # token_mean: weight x mean over MoE layers per token (Switch paper); batch_sum: weight x sum over MoE layers on
    # the SUMMED loss, i.e. divided by the batch's target tokens (the SparseMixer fairseq example)
    balance_reduction: Literal["token_mean", "batch_sum"] = "token_mean"
    # routed: router softmax + routed experts; reference: what the estimator's reference code uses (masked softmax
    # for the SparseMixer v1 family, f from the deterministic top-k for GRIN)
    balance_source: Literal["routed", "reference"] = "routed"
    zloss_weight: float = 0.0  # loss += zloss_weight * router z-loss
    shared_experts: int = 0  # always-on experts added to every token's output (DeepSeekMoE)
    expert_ffn_dim: int | None = None  # routed and shared experts' hidden size (fine-grained); null: model.ffn_dim
    score: Literal["softmax", "sigmoid"] = "softmax"  # router gating scores (sigmoid: DeepSeek-V3, k > 1 renormalized)
    # loss: the auxiliary balance loss (balance_weight); loss_free: a selection bias b, top-k of s + b, updated after
    # every update by bias_update_rate * sign(mean count - count) (Wang et al. 2024), no auxiliary loss;
    # global_loss: the balance loss with f from the counts of every micro-batch and rank of the update (Qiu et al.)
    balance: Literal["loss", "loss_free", "global_loss"] = "loss"
    bias_update_rate: float = 1.0e-3

    def __post_init__(self) -> None:
        p: list[tuple[str, str]] = []
        _positive(p, "shared_experts", self.shared_experts, allow_zero=True)
        if self.expert_ffn_dim is not None:
            _positive(p, "expert_ffn_dim", self.expert_ffn_dim)
        if self.num_experts < 1:
            p.append(("num_experts", f"{self.num_experts} must be >= 1"))
        if self.k < 1:
            p.append(("k", f"{self.k} must be >= 1"))
        elif self.num_experts >= 1 and self.k > self.num_experts:
            p.append(("k", f"{self.k} > moe.num_experts={self.num_experts}"))
        for key in ("encoder_layers", "decoder_layers"):
            layers = getattr(self, key)
            if any(i < 0 for i in layers):
                p.append((key, f"layer indices must be >= 0, got {list(layers)}"))
            if len(set(layers)) != len(layers):
                p.append((key, f"repeated layer index in {list(layers)}"))
        for key in ("capacity_factor", "eval_capacity_factor"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                p.append((key, f"{value} must be > 0 (or null for dropless)"))
            elif value is not None and self.num_experts >= 1 and value > self.num_experts:
                # capacity = factor x tokens x k / experts: past num_experts no token can be dropped
                p.append((key, f"{value} > moe.num_experts={self.num_experts} drops nothing; use null (dropless)"))
        _fraction(p, "input_jitter", self.input_jitter)
        _positive(p, "balance_weight", self.balance_weight, allow_zero=True)
        _positive(p, "zloss_weight", self.zloss_weight, allow_zero=True)
        _positive(p, "bias_update_rate", self.bias_update_rate)
        if self.balance == "loss_free" and self.balance_weight > 0:
            p.append(("balance", "loss_free balances without an auxiliary loss (Wang et al. 2024); set "
                                 "moe.balance_weight: 0"))
        if self.balance == "global_loss" and self.balance_weight == 0:
            p.append(("balance", "global_loss changes the balance loss's f, but moe.balance_weight is 0 (no balance "
                                 "loss); set moe.balance_weight > 0"))
        _raise(p)


@dataclass(frozen=True)
class RouterConfig:
    estimator: str = "sparsemixer"  # smx.estimators.names()
    options: dict = field(default_factory=dict)  # the estimator's options, e.g. {jitter_eps: 0.1}
    # controlled: every setting but the estimator from the recipe; reference: each arm as its authors trained it
    # (smx.recipe.protocol)
    protocol: Literal["controlled", "reference"] = "controlled"
    # controlled only: options per estimator, merged over `options` for that estimator, e.g.
    # {sparsemixer_v2: {jitter_eps: 0.01}}
    per_estimator: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        p: list[tuple[str, str]] = []
        for name, opts in self.per_estimator.items():
            if not isinstance(opts, dict):
                p.append((f"per_estimator.{name}", f"expected a mapping of options, got {opts!r}"))
        if self.per_estimator and self.protocol == "reference":
            p.append(("per_estimator", "not used under protocol reference (each arm takes its reference's options)"))
        _raise(p)


@dataclass(frozen=True)
class OptimConfig:
    optimizer: Literal["adam"] = "adam"
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float = 0.0  # 0 = no clipping
    # inverse_sqrt: linear warm-up, then lr * sqrt(warmup / update); polynomial_decay: linear warm-up from 0, then
    # linear decay to end_lr at train.max_update (fairseq's total_num_update); fixed: constant lr.
    scheduler: Literal["inverse_sqrt", "polynomial_decay", "fixed"] = "inverse_sqrt"
    warmup_updates: int = 4000
    warmup_init_lr: float = 1e-7  # inverse_sqrt only
    end_lr: float = 0.0  # polynomial_decay only: the lr reached at train.max_update

    def __post_init__(self) -> None:
        p: list[tuple[str, str]] = []
        _positive(p, "lr", self.lr)
        if not all(0.0 <= b < 1.0 for b in self.betas):
            p.append(("betas", f"{list(self.betas)} must be in [0, 1)"))
        _positive(p, "adam_eps", self.adam_eps)
        _positive(p, "weight_decay", self.weight_decay, allow_zero=True)
        _positive(p, "clip_norm", self.clip_norm, allow_zero=True)
        _positive(p, "warmup_updates", self.warmup_updates, allow_zero=True)
        _positive(p, "warmup_init_lr", self.warmup_init_lr, allow_zero=True)
        _positive(p, "end_lr", self.end_lr, allow_zero=True)
        if self.lr > 0 and self.end_lr > self.lr:
            p.append(("end_lr", f"{self.end_lr} > optim.lr={self.lr}"))
        if self.scheduler == "inverse_sqrt" and self.lr > 0 and self.warmup_init_lr > self.lr:
            p.append(("warmup_init_lr", f"{self.warmup_init_lr} > optim.lr={self.lr}"))
        _raise(p)


@dataclass(frozen=True)
class TrainConfig:
    max_tokens: int = 4096  # tokens per batch per process
    batch_size: int | None = None  # sentences per batch; null = limited by max_tokens only
    update_freq: int = 1  # batches accumulated per update (tokens/update = max_tokens * update_freq * processes)
    max_update: int = 0  # 0 = no limit (then max_epoch must be set)
    max_epoch: int = 0  # 0 = no limit
    max_wall_minutes: float = 0.0  # training wall-clock budget (fairseq --stop-time-hours); 0 = no limit
    label_smoothing: float = 0.1  # translation only
    log_interval: int = 100
    validate_interval: int = 1  # epochs
    validate_interval_updates: int = 0  # 0 = only at epoch ends
    save_interval_updates: int = 0  # 0 = only at epoch ends
    keep_last: int = 1  # interval checkpoints kept (checkpoint_last.pt and checkpoint_best.pt are always kept)
    fp16: bool | Literal["auto"] = "auto"  # auto = on GPU only (unless bf16)
    # bfloat16 instead (fairseq --bf16, on any device: fp32 master weights, no loss scaling). On GPUs from Ampere on
    # it is also the precision of torch's grouped GEMM kernel, without a host sync (smx.moe.dispatch).
    bf16: bool = False
    fp16_init_scale: int | None = None  # fairseq's --fp16-init-scale (null: fairseq's 128)
    fp16_scale_window: int | None = None  # fairseq's --fp16-scale-window (null: fairseq's own choice)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = 1
    cpu_threads: int = 1  # torch threads per engine process on CPU (OMP_NUM_THREADS); 0 = torch's default
    best_checkpoint_metric: Literal["loss", "nll_loss", "ppl"] = "loss"
    # Several processes: experts are replicated (data parallel). legacy_ddp all-reduces every gradient, so an expert
    # that got no token on one rank is fine; pytorch_ddp then needs --find-unused-parameters (passed automatically).
    ddp_backend: Literal["legacy_ddp", "pytorch_ddp", "no_c10d"] = "legacy_ddp"

    def __post_init__(self) -> None:
        p: list[tuple[str, str]] = []
        _positive(p, "max_tokens", self.max_tokens)
        if self.batch_size is not None:
            _positive(p, "batch_size", self.batch_size)
        _positive(p, "update_freq", self.update_freq)
        _positive(p, "max_update", self.max_update, allow_zero=True)
        _positive(p, "max_epoch", self.max_epoch, allow_zero=True)
        _positive(p, "max_wall_minutes", self.max_wall_minutes, allow_zero=True)
        if self.max_update == 0 and self.max_epoch == 0 and not self.max_wall_minutes:
            p.append(("max_update", "set train.max_update, train.max_epoch or train.max_wall_minutes "
                                    "(all 0: the run would never stop)"))
        _fraction(p, "label_smoothing", self.label_smoothing)
        _positive(p, "log_interval", self.log_interval)
        _positive(p, "validate_interval", self.validate_interval)
        for key in ("validate_interval_updates", "save_interval_updates", "num_workers", "cpu_threads"):
            _positive(p, key, getattr(self, key), allow_zero=True)
        _positive(p, "keep_last", self.keep_last)
        for key in ("fp16_init_scale", "fp16_scale_window"):
            if getattr(self, key) is not None:
                _positive(p, key, getattr(self, key))
        if self.fp16 is True and self.device == "cpu":
            p.append(("fp16", "true needs a GPU but train.device is cpu (use fp16: auto)"))
        if self.bf16:
            if self.fp16 is True:
                p.append(("bf16", "true and train.fp16 true: choose one precision (fp16: auto gives way to bf16)"))
            for key in ("fp16_init_scale", "fp16_scale_window"):
                if getattr(self, key) is not None:
                    p.append((key, "is fp16's loss scaling; train.bf16 trains without a loss scaler: set it to null"))
        _raise(p)


@dataclass(frozen=True)
class EvalConfig:
    beam: int = 4
    lenpen: float = 0.6
    subset: Literal["test", "valid"] = "test"
    max_tokens: int = 4096

    def __post_init__(self) -> None:
        p: list[tuple[str, str]] = []
        _positive(p, "beam", self.beam)
        _positive(p, "lenpen", self.lenpen, allow_zero=True)
        _positive(p, "max_tokens", self.max_tokens)
        _raise(p)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "moe": MoESection,
    "router": RouterConfig,
    "optim": OptimConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
}
