"""Causal LM `smx_switch_lm`: fairseq's transformer_lm (pre-LN decoder) with Switch/GRIN MoE feed-forward layers.

    fairseq-train DATA --task language_modeling --user-dir <smx>/fairseq_plugin --arch smx_switch_lm_small \
        --moe-num-experts 8 --moe-k 2 --moe-estimator sparsemixer_v2 --moe-decoder-layers 0,2,4

Architectures (stock transformer_lm options override any of these; every one is pre-LN as fairseq's LMs are):
  smx_switch_lm_tiny   2 layers, d 64, FFN 128, 4 heads (tests)
  smx_switch_lm_small  6 layers, d 512, FFN 2048, 8 heads (fairseq transformer_lm defaults)
  smx_switch_lm_base   12 layers, d 768, FFN 3072, 12 heads, GELU (fairseq transformer_lm_gpt, GPT-1 size)
Top-k with k >= 2 is allowed (GRIN: --moe-k 2 --moe-estimator sparsemixer_v2). Only plain token embeddings are
supported (no --character-embeddings / --adaptive-input).
"""

from dataclasses import dataclass

from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import TransformerConfig
from fairseq.models.transformer_lm import (
    DEFAULT_MAX_TARGET_POSITIONS,
    TransformerLanguageModel,
    TransformerLanguageModelConfig,
    base_lm_architecture,
    transformer_lm_gpt,
)
from fairseq.utils import safe_getattr

from smx.fairseq_plugin.args import MoEArgs, arch_defaults, moe_config, parse_layers
from smx.engine.contract import LM_MODEL
from smx.fairseq_plugin.layers import SmxTransformerDecoder, install_moe
from smx.moe.layer import relu_control_for


@dataclass
class SmxSwitchLMConfig(TransformerLanguageModelConfig, MoEArgs):
    """fairseq's transformer_lm options plus the shared --moe-* options (decoder placement only)."""


@register_model(LM_MODEL, dataclass=SmxSwitchLMConfig)
class SmxSwitchLanguageModel(TransformerLanguageModel):
    """Decoder-only Transformer LM; forward output extra["moe"]: the LayerAux of every MoE layer of this forward."""

    @classmethod
    def build_model(cls, args, task):
        for key in ("character_embeddings", "adaptive_input"):
            if safe_getattr(args, key, False):
                raise ValueError(f"--{key.replace('_', '-')} is not supported by {LM_MODEL}")
        config = moe_config(args)  # bad --moe-* values fail before anything is built
        if args.decoder_layers_to_keep:
            args.decoder_layers = len(args.decoder_layers_to_keep.split(","))
        if safe_getattr(args, "max_target_positions", None) is None:
            args.max_target_positions = safe_getattr(args, "tokens_per_sample", DEFAULT_MAX_TARGET_POSITIONS)
        embed_tokens = cls.build_embedding(args, task.source_dictionary, args.decoder_input_dim)
        decoder = SmxTransformerDecoder(
            TransformerConfig.from_namespace(args), task.target_dictionary, embed_tokens, no_encoder_attn=True
        )
        layers = parse_layers(safe_getattr(args, "moe_decoder_layers", None), len(decoder.layers),
                              "--moe-decoder-layers")
        install_moe(decoder.layers, layers, "dec", config, relu_control_for(config))
        return cls(decoder)


@register_model_architecture(LM_MODEL, f"{LM_MODEL}_tiny")
def smx_switch_lm_tiny(args):
    arch_defaults(args, decoder_embed_dim=64, decoder_ffn_embed_dim=128, decoder_layers=2, decoder_attention_heads=4)
    base_lm_architecture(args)


@register_model_architecture(LM_MODEL, f"{LM_MODEL}_small")
def smx_switch_lm_small(args):
    base_lm_architecture(args)


@register_model_architecture(LM_MODEL, f"{LM_MODEL}_base")
def smx_switch_lm_base(args):
    transformer_lm_gpt(args)
