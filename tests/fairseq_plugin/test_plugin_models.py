"""Models built through fairseq's registry with the argv contract: architectures, MoE placement, padding, aux."""

from __future__ import annotations

import pytest
import torch

import plugin_helpers as h
from smx.engine import contract as env
from smx.fairseq_plugin.layers import MoEBlock, MoELayerMixin
from smx.moe import MoEConfig, MoEFeedForward

PAIRS = [("s1 s2 s3 s4 s5", "t8 t13 t2"), ("s6 s7", "t1 t6 t11 t0 t5 t10"), ("s3 s3 s9", "t2")]


def moe_positions(layers) -> list[int]:
    return [i for i, layer in enumerate(layers) if isinstance(layer.fc1, MoEBlock)]


# ---------------------------------------------------------------- architectures

ARCHS = {  # arch: (layers, d, ffn, heads, pre-LN)
    "smx_switch_transformer_tiny": (2, 64, 128, 4, False),
    "smx_switch_transformer_small": (6, 512, 1024, 4, False),
    "smx_switch_transformer_base": (6, 512, 2048, 8, False),
    "smx_switch_transformer_big": (6, 1024, 4096, 16, False),
}


@pytest.mark.parametrize("arch", ARCHS)
def test_translation_arch_sizes(dict_dir, arch):
    layers, d, ffn, heads, pre_ln = ARCHS[arch]
    args, _ = h.parse(h.mt_argv(dict_dir, "--arch", arch))
    assert env.ARCH_LAYERS["translation"][arch.rsplit("_", 1)[1]] == layers  # recipes are checked against it
    for side in ("encoder", "decoder"):
        assert getattr(args, f"{side}_layers") == layers
        assert getattr(args, f"{side}_embed_dim") == d
        assert getattr(args, f"{side}_ffn_embed_dim") == ffn
        assert getattr(args, f"{side}_attention_heads") == heads
        assert getattr(args, f"{side}_normalize_before") is pre_ln


@pytest.mark.parametrize("arch", ARCHS)
def test_translation_arch_builds_with_default_placement(dict_dir, arch):
    layers, d, ffn, heads, _ = ARCHS[arch]
    extra = ["--moe-num-experts", "2"]
    if arch.endswith("_big"):  # keep the test light: the width is what is checked here
        extra += ["--encoder-layers", "2", "--decoder-layers", "2"]
        layers = 2
    _, model, _ = h.build(h.mt_argv(dict_dir, "--arch", arch, *extra))
    expected = list(range(0, layers, 2))  # every other layer from 0: [0] tiny, [0, 2, 4] for 6 layers
    assert moe_positions(model.encoder.layers) == expected
    assert moe_positions(model.decoder.layers) == expected
    block = model.encoder.layers[0].fc1
    assert (block.moe.d_model, block.moe.d_ff) == (d, ffn)
    assert model.encoder.layers[0].self_attn.num_heads == heads
    assert tuple(block.moe.w1.shape) == (2, d, ffn)


LM_ARCHS = {"smx_switch_lm_tiny": (2, 64, 128, 4), "smx_switch_lm_small": (6, 512, 2048, 8),
            "smx_switch_lm_base": (12, 768, 3072, 12)}


@pytest.mark.parametrize("arch", LM_ARCHS)
def test_lm_arch_builds(dict_dir, arch):
    layers, d, ffn, heads = LM_ARCHS[arch]
    extra = ["--moe-num-experts", "2", "--moe-k", "2", "--moe-estimator", "sparsemixer_v2"]
    args, _ = h.parse(h.lm_argv(dict_dir, "--arch", arch, *extra))
    assert (args.decoder_layers, args.decoder_embed_dim, args.decoder_ffn_embed_dim,
            args.decoder_attention_heads) == (layers, d, ffn, heads)
    assert env.ARCH_LAYERS["language_modeling"][arch.rsplit("_", 1)[1]] == layers
    if arch.endswith("_base"):
        extra += ["--decoder-layers", "4"]
        layers = 4
    _, model, _ = h.build(h.lm_argv(dict_dir, "--arch", arch, *extra))
    assert moe_positions(model.decoder.layers) == list(range(0, layers, 2))
    assert model.decoder.layers[0].normalize_before  # fairseq LMs are pre-LN
    assert model.decoder.layers[0].fc1.moe.config.k == 2


# ---------------------------------------------------------------- placement and argv mapping


def test_explicit_placement_and_shared_class(dict_dir):
    _, model, _ = h.build(h.mt_argv(dict_dir, "--encoder-layers", "4", "--decoder-layers", "3",
                                    "--moe-encoder-layers", "1,3", "--moe-decoder-layers", "2"))
    assert moe_positions(model.encoder.layers) == [1, 3]
    assert moe_positions(model.decoder.layers) == [2]
    enc, dec = model.encoder.layers[1], model.decoder.layers[2]
    assert isinstance(enc, MoELayerMixin) and isinstance(dec, MoELayerMixin)
    assert type(enc.fc1) is type(dec.fc1) is MoEBlock
    assert type(enc.fc1.moe) is type(dec.fc1.moe) is MoEFeedForward
    assert [enc.fc1.name, dec.fc1.name] == ["enc1", "dec2"]
    assert isinstance(model.encoder.layers[0].fc1, torch.nn.Linear)  # dense layers stay stock


def test_empty_placement_means_no_moe(dict_dir):
    _, model, _ = h.build(h.mt_argv(dict_dir, "--moe-encoder-layers", "", "--moe-decoder-layers", "1"))
    assert moe_positions(model.encoder.layers) == []
    assert moe_positions(model.decoder.layers) == [1]


def test_every_flag_reaches_the_moe_config(dict_dir):
    _, model, _ = h.build(h.mt_argv(
        dict_dir, "--moe-num-experts", "6", "--moe-k", "2", "--moe-estimator", "sparsemixer_v2",
        "--moe-estimator-options", '{"jitter_eps": 0.05}', "--moe-capacity-factor", "1.25",
        "--moe-eval-capacity-factor", "2.0", "--moe-drop-policy", "probability", "--moe-output-scale",
        "--moe-router-bias", "--moe-input-jitter", "0.01", "--activation-fn", "gelu", "--activation-dropout", "0.1"))
    expected = MoEConfig(num_experts=6, k=2, estimator="sparsemixer_v2", estimator_options={"jitter_eps": 0.05},
                         capacity_factor=1.25, eval_capacity_factor=2.0, drop_policy="probability",
                         output_scale=True, router_bias=True, input_jitter=0.01, activation="gelu",
                         activation_dropout=0.1)
    for layer in (model.encoder.layers[0], model.decoder.layers[0]):
        assert layer.fc1.moe.config == expected
        assert layer.fc1.moe.omega is not None and layer.fc1.moe.router.proj.bias is not None


def test_shared_and_fine_grained_expert_flags_reach_the_layer(dict_dir):
    _, model, _ = h.build(h.mt_argv(dict_dir, "--moe-num-experts", "4", "--moe-k", "2", "--moe-estimator", "topk",
                                    "--moe-shared-experts", "2", "--moe-expert-ffn-dim", "8"))
    moe = model.encoder.layers[0].fc1.moe
    assert (moe.config.shared_experts, moe.config.expert_ffn_dim) == (2, 8)
    assert moe.w1.shape[-1] == 8 and moe.shared.w1.shape[0] == 2 and moe.shared.w1.shape[-1] == 8


def test_score_and_loss_free_flags_reach_the_layer(dict_dir):
    _, model, _ = h.build(h.mt_argv(dict_dir, "--moe-num-experts", "4", "--moe-k", "2", "--moe-estimator", "topk",
                                    "--moe-score", "sigmoid", "--moe-balance", "loss_free",
                                    "--moe-bias-update-rate", "0.002"))
    moe = model.decoder.layers[0].fc1.moe
    assert (moe.config.score, moe.config.balance, moe.config.bias_update_rate) == ("sigmoid", "loss_free", 0.002)
    assert any(n.endswith("fc1.moe.selection_bias") for n, _ in model.named_buffers())
    model.set_num_updates(0)  # what FairseqTask.train_step calls: reaches every MoE layer
    assert int(moe.counted_update) == 0


def test_lm_flags_reach_the_moe_config(dict_dir):
    _, model, _ = h.build(h.lm_argv(
        dict_dir, "--moe-num-experts", "4", "--moe-k", "2", "--moe-estimator", "sparsemixer_v2",
        "--moe-estimator-options", '{"jitter_eps": 0.01}', "--moe-capacity-factor", "1.5",
        "--moe-drop-policy", "probability", "--moe-decoder-layers", "1"))
    assert moe_positions(model.decoder.layers) == [1]
    assert model.decoder.layers[1].fc1.moe.config == MoEConfig(
        num_experts=4, k=2, estimator="sparsemixer_v2", estimator_options={"jitter_eps": 0.01}, capacity_factor=1.5,
        drop_policy="probability")


@pytest.mark.parametrize("flags, message", [
    (["--moe-encoder-layers", "2"], "--moe-encoder-layers"),
    (["--moe-decoder-layers", "0,x"], "--moe-decoder-layers"),
    (["--moe-estimator-options", "{jitter"], "--moe-estimator-options"),
    (["--moe-estimator", "nope"], "moe.estimator"),
    (["--moe-k", "3", "--moe-num-experts", "2"], "moe.k"),
    (["--activation-fn", "tanh"], "--activation-fn"),
    (["--checkpoint-activations"], "--checkpoint-activations"),
])
def test_bad_moe_args_raise_value_error_naming_the_flag(dict_dir, flags, message):
    with pytest.raises(ValueError, match=message):
        h.build(h.mt_argv(dict_dir, *flags))


def test_lm_has_no_encoder_flag(dict_dir):
    with pytest.raises(SystemExit):
        h.parse(h.lm_argv(dict_dir, "--moe-encoder-layers", "0"))


# ---------------------------------------------------------------- forward: padding and aux outputs


def _spy_masks(model, monkeypatch) -> dict[str, torch.Tensor | None]:
    """Record the padding mask each MoEFeedForward receives, by layer name."""
    seen = {}
    stacks = (model.encoder.layers, model.decoder.layers) if hasattr(model, "encoder") else (model.decoder.layers,)
    for layers in stacks:
        for layer in layers:
            block = layer.fc1
            if isinstance(block, MoEBlock):
                original = block.moe.forward

                def spy(x, padding_mask=None, generator=None, _name=block.name, _orig=original):
                    seen[_name] = None if padding_mask is None else padding_mask.clone()
                    return _orig(x, padding_mask=padding_mask, generator=generator)

                monkeypatch.setattr(block.moe, "forward", spy)
    return seen


def test_translation_padding_is_not_routed(dict_dir, monkeypatch):
    task, model, _ = h.build(h.mt_argv(dict_dir, "--moe-estimator", "topk", "--moe-decoder-layers", "0,1"))
    sample = h.mt_sample(task, PAIRS)
    seen = _spy_masks(model, monkeypatch)
    model(**sample["net_input"])
    pad = task.source_dictionary.pad()
    src, prev = sample["net_input"]["src_tokens"], sample["net_input"]["prev_output_tokens"]
    assert src.eq(pad).any() and prev.eq(pad).any()  # the batch really is padded, on both sides
    assert torch.equal(seen["enc0"], src.eq(pad).t())  # (time, batch), True = pad
    assert torch.equal(seen["dec0"], prev.eq(pad).t())
    assert torch.equal(seen["dec1"], prev.eq(pad).t())


def test_lm_padding_is_not_routed(dict_dir, monkeypatch):
    task, model, _ = h.build(h.lm_argv(dict_dir, "--moe-k", "2", "--moe-estimator", "sparsemixer_v2"))
    sample = h.lm_sample(task, ["w1 w2 w3 w4 w5 w6", "w3 w4"])
    seen = _spy_masks(model, monkeypatch)
    model(**sample["net_input"])
    src = sample["net_input"]["src_tokens"]
    assert torch.equal(seen["dec0"], src.eq(task.source_dictionary.pad()).t())


def test_aux_outputs_per_forward_without_accumulation(dict_dir):
    task, model, _ = h.build(h.mt_argv(dict_dir, "--moe-num-experts", "4", "--moe-decoder-layers", "0,1"))
    sample = h.mt_sample(task, PAIRS)
    for _ in range(2):
        _, extra = model(**sample["net_input"])
        aux = extra["moe"]
        assert [a.name for a in aux] == ["enc0", "dec0", "dec1"]
        for a in aux:
            assert a.balance_loss.requires_grad and a.balance_loss.ndim == 0
            assert a.stats.load.shape == (4,)
            assert a.stats.load.sum().item() == pytest.approx(1.0)
    assert all(block.pop_aux() is None for block in (model.encoder.layers[0].fc1, model.decoder.layers[0].fc1))


def test_encoder_load_counts_only_real_tokens(dict_dir):
    """The routed fractions of enc0 are multiples of 1/(real source tokens): padding never counts."""
    task, model, _ = h.build(h.mt_argv(dict_dir, "--moe-num-experts", "4", "--moe-estimator", "topk"))
    sample = h.mt_sample(task, PAIRS)
    model.eval()
    _, extra = model(**sample["net_input"])
    enc = next(a for a in extra["moe"] if a.name == "enc0")
    real = int(sample["net_input"]["src_tokens"].ne(task.source_dictionary.pad()).sum())
    counts = enc.stats.load * real
    assert torch.allclose(counts, counts.round(), atol=1e-4)
    assert int(counts.round().sum()) == real


def test_incremental_decoding_matches_full_forward(dict_dir):
    """Decoder MoE layers in incremental (generation) mode give the teacher-forced outputs."""
    task, model, _ = h.build(h.mt_argv(dict_dir, "--moe-num-experts", "4", "--moe-decoder-layers", "0,1",
                                       "--moe-estimator", "sparsemixer"))
    model.eval()
    sample = h.mt_sample(task, [PAIRS[0]])  # one sentence: no padding
    net = sample["net_input"]
    with torch.no_grad():
        full, _ = model(**net)
        enc = model.encoder(net["src_tokens"], src_lengths=net["src_lengths"])
        state: dict = {}
        prev = net["prev_output_tokens"]
        steps = [model.decoder(prev[:, : t + 1], encoder_out=enc, incremental_state=state)[0]
                 for t in range(prev.shape[1])]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
