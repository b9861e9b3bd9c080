"""The --moe-* model arguments  and their translation to MoEConfig.

One dataclass per model family, one source of defaults: the translation model adds them to its legacy argparse
parser (gen_parser_from_dataclass), the LM inherits them into its fairseq dataclass config. (No `from __future__
import annotations` here: fairseq reads the field types at run time.)
"""

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from smx.moe import MoEConfig
from smx.moe.config import BALANCE_SOURCES

DropPolicy = ChoiceEnum(["position", "probability"])
BalanceSource = ChoiceEnum(list(BALANCE_SOURCES))
LAYERS_HELP = ("comma-separated layer indices whose FFN is a MoE layer ('' = none; default: every other layer "
               "starting at 0)")


@dataclass
class MoEArgs(FairseqDataclass):
    """MoE arguments shared by the translation and language models (decoder placement included)."""

    moe_num_experts: int = field(default=8, metadata={"help": "number of experts per MoE layer"})
    moe_k: int = field(default=1, metadata={"help": "experts per token (top-k)"})
    moe_estimator: str = field(default="sparsemixer", metadata={"help": "router gradient estimator (smx.estimators)"})
    moe_estimator_options: str = field(
        default="{}", metadata={"help": 'estimator options as a JSON object, e.g. \'{"jitter_eps": 0.1}\''}
    )
    moe_decoder_layers: Optional[str] = field(default=None, metadata={"help": "decoder " + LAYERS_HELP})
    moe_capacity_factor: Optional[float] = field(
        default=None, metadata={"help": "training expert capacity factor (default: dropless)"}
    )
    moe_eval_capacity_factor: Optional[float] = field(
        default=None, metadata={"help": "evaluation expert capacity factor (default: dropless)"}
    )
    moe_drop_policy: DropPolicy = field(
        default="position", metadata={"help": "which assignments an over-full expert keeps"}
    )
    moe_output_scale: bool = field(default=False, metadata={"help": "learnable output scale omega (SparseMixer v1)"})
    moe_router_bias: bool = field(default=False, metadata={"help": "router linear layer with a bias"})
    moe_input_jitter: float = field(
        default=0.0, metadata={"help": "multiplicative U(1-eps, 1+eps) jitter on the router input (training)"}
    )
    moe_shared_experts: int = field(default=0, metadata={"help": "always-on experts added to every token (DeepSeekMoE)"})
    moe_expert_ffn_dim: Optional[int] = field(
        default=None, metadata={"help": "hidden size of routed and shared experts (default: the model's FFN size)"})
    moe_score: str = field(default="softmax", metadata={"help": "router gating scores: softmax | sigmoid"})
    moe_balance: str = field(default="loss", metadata={"help": "loss (auxiliary balance loss) | loss_free (selection "
                                                                 "bias updated after every update) | global_loss "
                                                                 "(balance loss, f over every micro-batch and rank)"})
    moe_bias_update_rate: float = field(default=1e-3, metadata={"help": "loss_free: the bias update rate u"})
    moe_balance_source: BalanceSource = field(
        default="routed", metadata={"help": "balance-loss inputs: router softmax + routed experts, or the "
                                            "estimator's reference code's (masked softmax, deterministic top-k)"}
    )


@dataclass
class MoEEncoderDecoderArgs(MoEArgs):
    """Translation models also place MoE layers in the encoder."""

    moe_encoder_layers: Optional[str] = field(default=None, metadata={"help": "encoder " + LAYERS_HELP})


def parse_layers(spec: Optional[str], num_layers: int, flag: str) -> tuple[int, ...]:
    """'0,2,4' -> (0, 2, 4); '' -> (); None -> every other layer from 0. Raises ValueError naming `flag`."""
    if spec is None:
        return tuple(range(0, num_layers, 2))
    text = str(spec).strip()
    if text in ("", "none", "None"):
        return ()
    try:
        indices = [int(part) for part in text.split(",") if part.strip() != ""]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated layer indices; got {spec!r}") from None
    bad = [i for i in indices if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"{flag}: layer index {bad[0]} out of range for {num_layers} layers; got {spec!r}")
    if len(set(indices)) != len(indices):
        raise ValueError(f"{flag} lists a layer twice; got {spec!r}")
    return tuple(sorted(indices))


def _estimator_options(text: Any) -> dict:
    if isinstance(text, dict):
        return dict(text)
    try:
        options = json.loads(text) if str(text).strip() else {}
    except json.JSONDecodeError as err:
        raise ValueError(f"--moe-estimator-options must be a JSON object; got {text!r} ({err.msg})") from None
    if not isinstance(options, dict):
        raise ValueError(f"--moe-estimator-options must be a JSON object; got {text!r}")
    return options


def _activation(args) -> tuple[str, float]:
    """fairseq's --activation-fn / --activation-dropout (or legacy --relu-dropout) for the experts."""
    name = str(getattr(args, "activation_fn", "relu"))
    if name not in ("relu", "gelu"):
        raise ValueError(f"--activation-fn {name} is not supported by MoE layers; use relu or gelu")
    dropout = float(getattr(args, "activation_dropout", 0.0) or 0.0)
    if dropout == 0:
        dropout = float(getattr(args, "relu_dropout", 0.0) or 0.0)
    return name, dropout


def moe_config(args) -> MoEConfig:
    """MoEConfig from parsed fairseq args (argparse Namespace or omegaconf DictConfig)."""
    activation, activation_dropout = _activation(args)
    capacity = getattr(args, "moe_capacity_factor", None)
    eval_capacity = getattr(args, "moe_eval_capacity_factor", None)
    return MoEConfig(
        num_experts=int(args.moe_num_experts),
        k=int(args.moe_k),
        estimator=str(args.moe_estimator),
        estimator_options=_estimator_options(args.moe_estimator_options),
        capacity_factor=None if capacity is None else float(capacity),
        eval_capacity_factor=None if eval_capacity is None else float(eval_capacity),
        drop_policy=str(args.moe_drop_policy),
        output_scale=bool(args.moe_output_scale),
        router_bias=bool(args.moe_router_bias),
        input_jitter=float(args.moe_input_jitter),
        balance_source=str(getattr(args, "moe_balance_source", "routed")),
        shared_experts=int(getattr(args, "moe_shared_experts", 0) or 0),
        score=str(getattr(args, "moe_score", "softmax")),
        balance=str(getattr(args, "moe_balance", "loss")),
        bias_update_rate=float(getattr(args, "moe_bias_update_rate", 1e-3)),
        expert_ffn_dim=None if getattr(args, "moe_expert_ffn_dim", None) is None else int(args.moe_expert_ffn_dim),
        activation=activation,
        activation_dropout=activation_dropout,
    )


def arch_defaults(args, **values) -> None:
    """For architecture functions: set each value unless the user gave it on the command line."""
    for key, value in values.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
