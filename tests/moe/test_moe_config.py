"""MoEConfig validation and the estimator checks made when the layer is built: ValueError naming the key."""

import dataclasses

import pytest

from smx.moe import MoEConfig, MoEFeedForward


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"num_experts": 0}, "moe.num_experts"),
        ({"num_experts": 2.0}, "moe.num_experts"),
        ({"k": 0}, "moe.k"),
        ({"k": 5}, "moe.k"),
        ({"capacity_factor": 0.0}, "moe.capacity_factor"),
        ({"capacity_factor": -1.0}, "moe.capacity_factor"),
        ({"capacity_factor": float("nan")}, "moe.capacity_factor"),
        ({"eval_capacity_factor": 0}, "moe.eval_capacity_factor"),
        ({"drop_policy": "random"}, "moe.drop_policy"),
        ({"activation": "swish"}, "moe.activation"),
        ({"input_jitter": -0.1}, "moe.input_jitter"),
        ({"input_jitter": 1.0}, "moe.input_jitter"),
        ({"activation_dropout": 1.0}, "moe.activation_dropout"),
        ({"output_scale": "yes"}, "moe.output_scale"),
        ({"router_bias": 1}, "moe.router_bias"),
        ({"estimator": ""}, "moe.estimator"),
        ({"estimator_options": ["jitter_eps"]}, "moe.estimator_options"),
    ],
)
def test_bad_config_names_the_key(changes, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        MoEConfig(**{"num_experts": 4, **changes})


def test_config_defaults_and_frozen():
    config = MoEConfig(num_experts=8)
    assert (config.k, config.estimator, config.capacity_factor, config.eval_capacity_factor) == (1, "sparsemixer",
                                                                                               None, None)
    assert (config.drop_policy, config.activation, config.input_jitter, config.output_scale) == ("position", "relu",
                                                                                                0.0, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.k = 2


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"estimator": "nope"}, "moe.estimator"),
        ({"estimator": "topk", "estimator_options": {"temperature": 2}}, "moe.estimator_options"),
        ({"estimator": "topk", "estimator_options": {"jitter_eps": -1}}, "moe.estimator_options"),
        ({"estimator": "topk", "estimator_options": {"normalize": True}}, "moe.k"),  # constant top-1 gate
        ({"estimator": "sparsemixer", "k": 2}, "moe.k"),  # top-1 only
    ],
)
def test_estimator_checked_when_the_layer_is_built(changes, key):
    config = MoEConfig(**{"num_experts": 4, **changes})
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        MoEFeedForward(4, 8, config)


def test_constant_gate_refused_but_normalized_top2_allowed():
    with pytest.raises(ValueError, match="constant"):
        MoEFeedForward(4, 8, MoEConfig(num_experts=4, estimator="topk", estimator_options={"normalize": True}))
    MoEFeedForward(4, 8, MoEConfig(num_experts=4, k=2, estimator="topk", estimator_options={"normalize": True}))


def test_bad_sizes():
    with pytest.raises(ValueError, match="d_ff"):
        MoEFeedForward(4, 0, MoEConfig(num_experts=2))
