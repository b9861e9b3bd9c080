"""Translation model `smx_switch_transformer`: fairseq's Transformer with Switch MoE feed-forward layers.

    fairseq-train DATA --task translation --user-dir <smx>/fairseq_plugin --arch smx_switch_transformer_base \
        --moe-num-experts 8 --moe-k 1 --moe-estimator sparsemixer --moe-encoder-layers 0,2,4 --moe-decoder-layers 0,2,4

Architectures (the stock fairseq transformer options still override any of these):
  smx_switch_transformer_tiny   2+2 layers, d 64, FFN 128, 4 heads (tests)
  smx_switch_transformer_small  6+6 layers, d 512, FFN 1024, 4 heads (IWSLT, fairseq transformer_iwslt_de_en)
  smx_switch_transformer_base   6+6 layers, d 512, FFN 2048, 8 heads, post-LN (transformer-base, the SparseMixer
                                reference setting)
  smx_switch_transformer_big    6+6 layers, d 1024, FFN 4096, 16 heads, dropout 0.3 (transformer_vaswani_wmt_en_de_big)
Every expert has the dense FFN's size; MoE layers default to every other layer starting at 0.
"""

from __future__ import annotations

from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig, TransformerModel
from fairseq.models.transformer.transformer_legacy import (
    base_architecture,
    transformer_iwslt_de_en,
    transformer_vaswani_wmt_en_de_big,
)
from fairseq.utils import safe_getattr

from smx.fairseq_plugin.args import MoEEncoderDecoderArgs, arch_defaults, moe_config, parse_layers
from smx.engine.contract import TRANSLATION_MODEL
from smx.fairseq_plugin.layers import SmxTransformerDecoder, SmxTransformerEncoder, install_moe
from smx.moe.layer import relu_control_for


@register_model(TRANSLATION_MODEL)
class SmxSwitchTransformerModel(TransformerModel):
    """Encoder-decoder Transformer whose chosen layers route tokens to experts. Forward output extra["moe"]: the
    LayerAux of every MoE layer of this forward (encoder first, in layer order)."""

    @classmethod
    def add_args(cls, parser):
        super().add_args(parser)
        gen_parser_from_dataclass(parser, MoEEncoderDecoderArgs())

    @classmethod
    def build_model(cls, args, task):
        config = moe_config(args)  # bad --moe-* values fail before anything is built
        model = super().build_model(args, task)
        enc = parse_layers(safe_getattr(args, "moe_encoder_layers", None), len(model.encoder.layers),
                           "--moe-encoder-layers")
        dec = parse_layers(safe_getattr(args, "moe_decoder_layers", None), len(model.decoder.layers),
                           "--moe-decoder-layers")
        control = relu_control_for(config)  # ReMoE: one L1 coefficient for every MoE layer; else None
        install_moe(model.encoder.layers, enc, "enc", config, control)
        install_moe(model.decoder.layers, dec, "dec", config, control)
        return model

    @classmethod
    def build_encoder(cls, args, src_dict, embed_tokens):
        return SmxTransformerEncoder(TransformerConfig.from_namespace(args), src_dict, embed_tokens)

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        cfg = TransformerConfig.from_namespace(args)
        return SmxTransformerDecoder(cfg, tgt_dict, embed_tokens, no_encoder_attn=cfg.no_cross_attention)


@register_model_architecture(TRANSLATION_MODEL, f"{TRANSLATION_MODEL}_tiny")
def smx_switch_transformer_tiny(args):
    arch_defaults(args, encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_layers=2, encoder_attention_heads=4,
              decoder_embed_dim=64, decoder_ffn_embed_dim=128, decoder_layers=2, decoder_attention_heads=4)
    base_architecture(args)


@register_model_architecture(TRANSLATION_MODEL, f"{TRANSLATION_MODEL}_small")
def smx_switch_transformer_small(args):
    transformer_iwslt_de_en(args)


@register_model_architecture(TRANSLATION_MODEL, f"{TRANSLATION_MODEL}_base")
def smx_switch_transformer_base(args):
    base_architecture(args)


@register_model_architecture(TRANSLATION_MODEL, f"{TRANSLATION_MODEL}_big")
def smx_switch_transformer_big(args):
    transformer_vaswani_wmt_en_de_big(args)
