"""One MoE implementation for fairseq's encoder and decoder layers, and the encoder/decoder that report its outputs.

How a fairseq layer becomes a Switch layer (MoELayerMixin.install_moe): fairseq's layer forward computes its FFN
as fc2(activation_dropout(activation_fn(fc1(x)))). install_moe() puts an MoEBlock (wrapping smx.moe.MoEFeedForward
with the same d_model and d_ff, activation and activation dropout) in place of fc1 and makes activation_fn,
activation_dropout_module and fc2 identities, so fairseq's own layer forward (attention, residuals, LayerNorm
placement, incremental decoding) runs unchanged, for encoder and decoder alike.

Padding: the mixin's forward passes the layer's padding mask to the block for the duration of the call (encoder:
`encoder_padding_mask`, decoder: `self_attn_padding_mask`, which fairseq derives from prev_output_tokens; both
(batch, time), None when the batch has no padding), so padding tokens are never routed.

Aux outputs: each block keeps the LayerAux of its latest call; the encoder/decoder pops them right after its own
forward and returns them, in layer order, as encoder_out["moe"] and extra["moe"] (decoder extra also carries the
encoder's): no module globals, nothing accumulates across forwards.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Optional

from fairseq.models.transformer import TransformerDecoderBase, TransformerEncoderBase
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase, TransformerEncoderLayerBase
from torch import Tensor, nn

from smx.fairseq_plugin.engine import refuse_unsupported
from smx.moe import MoEConfig, MoEFeedForward, RoutingStats
from smx.moe.per_update import ReluControl


@dataclass(frozen=True)
class LayerAux:
    """One MoE layer's auxiliary outputs of one forward (no expert activations kept)."""

    name: str  # "enc0", "dec2", ...: the logged key is moe_load_{name}_e{i}
    balance_loss: Tensor  # () float32, differentiable
    z_loss: Tensor  # () float32, differentiable
    stats: RoutingStats  # detached
    penalty: Tensor  # () float32, differentiable: a loss the layer weights itself (ReMoE's lambda * L1), per token
    l1_coeff: Optional[Tensor] = None  # () float32 ReMoE's current lambda (None: not a ReMoE layer)


def _identity(x: Tensor) -> Tensor:
    return x


class MoEBlock(nn.Module):
    """Stands in for a layer's fc1: y = MoEFeedForward(x, padding_mask); records the call's LayerAux."""

    def __init__(self, d_model: int, d_ff: int, config: MoEConfig, name: str,
                 relu_control: Optional[ReluControl] = None) -> None:
        super().__init__()
        self.moe = MoEFeedForward(d_model, d_ff, config, relu_control=relu_control)
        self.name = name
        self.padding_mask: Optional[Tensor] = None  # (time, batch) True = pad; set by the layer for one call
        self._aux: Optional[LayerAux] = None

    def forward(self, x: Tensor) -> Tensor:  # x (time, batch, d_model)
        out = self.moe(x, padding_mask=self.padding_mask)
        control = self.moe.relu_control
        self._aux = LayerAux(self.name, out.balance_loss, out.z_loss, out.stats, out.penalty,
                             None if control is None else control.coefficient())
        return out.y

    def pop_aux(self) -> Optional[LayerAux]:
        aux, self._aux = self._aux, None
        return aux


class MoELayerMixin:
    """Mixed into fairseq's encoder and decoder layer classes; a dense layer until install_moe() is called."""

    padding_mask_arg: str = ""  # name of the layer forward's (batch, time) padding-mask argument
    forward_signature: inspect.Signature  # signature of the fairseq layer's forward, to find that argument

    def install_moe(self, config: MoEConfig, name: str, relu_control: Optional[ReluControl] = None) -> None:
        d_model, d_ff = self.fc1.in_features, self.fc1.out_features
        self.fc1 = MoEBlock(d_model, d_ff, config, name, relu_control)
        self.fc2 = nn.Identity()
        self.activation_fn = _identity
        self.activation_dropout_module = nn.Identity()  # the experts apply config.activation_dropout

    @property
    def moe_block(self) -> Optional[MoEBlock]:
        return self.fc1 if isinstance(self.fc1, MoEBlock) else None

    def forward(self, x, *args, **kwargs):
        block = self.moe_block
        if block is None:
            return super().forward(x, *args, **kwargs)
        bound = self.forward_signature.bind(self, x, *args, **kwargs)
        mask = bound.arguments.get(self.padding_mask_arg)  # (batch, time) or None
        block.padding_mask = None if mask is None else mask.transpose(0, 1).bool()  # (time, batch)
        try:
            return super().forward(x, *args, **kwargs)
        finally:
            block.padding_mask = None


class SmxEncoderLayer(MoELayerMixin, TransformerEncoderLayerBase):
    padding_mask_arg = "encoder_padding_mask"
    forward_signature = inspect.signature(TransformerEncoderLayerBase.forward)


class SmxDecoderLayer(MoELayerMixin, TransformerDecoderLayerBase):
    padding_mask_arg = "self_attn_padding_mask"
    forward_signature = inspect.signature(TransformerDecoderLayerBase.forward)


def moe_blocks(layers: nn.ModuleList) -> list[MoEBlock]:
    return [layer.moe_block for layer in layers if isinstance(layer, MoELayerMixin) and layer.moe_block is not None]


def install_moe(layers: nn.ModuleList, indices: tuple[int, ...], prefix: str, config: MoEConfig,
                relu_control: Optional[ReluControl] = None) -> None:
    """Turn layers[i] (i in indices) into MoE layers named f"{prefix}{i}"; relu_control: the one every MoE layer of
    the model shares (ReMoE: smx.moe.layer.relu_control_for), passed to each install."""
    for i in indices:
        layers[i].install_moe(config, f"{prefix}{i}", relu_control)


def pop_aux(layers: nn.ModuleList) -> list[LayerAux]:
    return [aux for block in moe_blocks(layers) if (aux := block.pop_aux()) is not None]


class SmxTransformerEncoder(TransformerEncoderBase):
    """fairseq's encoder with SmxEncoderLayers; encoder_out["moe"] = list of LayerAux."""

    def build_encoder_layer(self, cfg):
        refuse_unsupported(cfg)
        return SmxEncoderLayer(cfg, return_fc=self.return_fc)

    def forward(self, src_tokens, src_lengths: Optional[Tensor] = None, return_all_hiddens: bool = False,
                token_embeddings: Optional[Tensor] = None):
        out = super().forward(src_tokens, src_lengths, return_all_hiddens, token_embeddings)
        out["moe"] = pop_aux(self.layers)
        return out


class SmxTransformerDecoder(TransformerDecoderBase):
    """fairseq's decoder with SmxDecoderLayers; extra["moe"] = encoder's LayerAux list + the decoder's."""

    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        refuse_unsupported(cfg)
        return SmxDecoderLayer(cfg, no_encoder_attn)

    def extract_features(self, prev_output_tokens, encoder_out=None, incremental_state=None,
                         full_context_alignment: bool = False, alignment_layer: Optional[int] = None,
                         alignment_heads: Optional[int] = None):
        x, extra = super().extract_features(prev_output_tokens, encoder_out, incremental_state,
                                            full_context_alignment, alignment_layer, alignment_heads)
        encoder_aux = list(encoder_out.get("moe", [])) if encoder_out is not None else []
        extra["moe"] = encoder_aux + pop_aux(self.layers)
        return x, extra
