"""Shared experts and fine-grained experts (DeepSeekMoE; issue 16 part 5): values, sizes, parameter counts."""

import pytest
import torch
import torch.nn.functional as F

from smx.moe import MoEConfig, MoEFeedForward

ROUTE_X = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.8, 0.0, 0.2], [0.0, 1.0, 0.0], [0.7, 0.3, 0.0],
                        [0.1, 0.9, 0.0]])  # (6, 3)


def shared_ffn(x, shared, s):
    """Shared expert s applied by hand. x (n, d) -> (n, d)."""
    return F.relu(x @ shared.w1[s] + shared.b1[s]) @ shared.w2[s] + shared.b2[s]


def make(**cfg):
    torch.manual_seed(0)
    return MoEFeedForward(3, 8, MoEConfig(estimator="topk", **cfg))


@pytest.mark.parametrize("training", [True, False])
def test_shared_experts_are_added_to_every_token_even_a_dropped_one(training):
    layer = make(num_experts=2, k=1, shared_experts=2, capacity_factor=2 / 3, eval_capacity_factor=2 / 3)
    layer.train(training)
    with torch.no_grad():
        layer.router.proj.weight.copy_(torch.tensor([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0]]))
    out = layer(ROUTE_X)
    shared, layer.shared = layer.shared, None
    routed = layer(ROUTE_X)  # the same layer without its shared experts
    expected = shared_ffn(ROUTE_X, shared, 0) + shared_ffn(ROUTE_X, shared, 1)  # (6, 3)
    torch.testing.assert_close(out.y - routed.y, expected)
    assert out.stats.dropped.item() == pytest.approx(2 / 6)  # tokens 2 and 4 dropped: their output is shared only
    torch.testing.assert_close(out.y[[2, 4]], expected[[2, 4]])


def test_shared_experts_get_gradients_and_padding_stays_zero():
    layer = make(num_experts=2, k=1, shared_experts=1)
    x = ROUTE_X.reshape(2, 3, 3).clone().requires_grad_(True)
    pad = torch.tensor([[False, False, True], [False, True, False]])
    out = layer(x, padding_mask=pad)
    assert torch.equal(out.y[pad], torch.zeros(2, 3))
    out.y.sum().backward()
    assert layer.shared.w1.grad.abs().sum() > 0 and torch.equal(x.grad[pad], torch.zeros(2, 3))


def test_expert_ffn_dim_sizes_and_parameter_counts():
    d, f, e, s, fe = 3, 8, 4, 2, 5
    layer = MoEFeedForward(d, f, MoEConfig(num_experts=e, k=2, estimator="topk", shared_experts=s,
                                           expert_ffn_dim=fe))
    assert layer.d_ff == fe and tuple(layer.w1.shape) == (e, d, fe) and tuple(layer.w2.shape) == (e, fe, d)
    assert tuple(layer.shared.w1.shape) == (s, d, fe) and tuple(layer.shared.b2.shape) == (s, d)
    per_expert = d * fe + fe + fe * d + d
    router = d * e
    assert sum(p.numel() for p in layer.parameters()) == router + (e + s) * per_expert
    plain = MoEFeedForward(d, f, MoEConfig(num_experts=e, k=2, estimator="topk"))
    assert plain.shared is None and plain.d_ff == f
    assert sum(p.numel() for p in plain.parameters()) == router + e * (d * f + f + f * d + d)


@pytest.mark.parametrize("cfg, message", [({"shared_experts": -1}, "moe.shared_experts"),
                                          ({"shared_experts": 1.5}, "moe.shared_experts"),
                                          ({"expert_ffn_dim": 0}, "moe.expert_ffn_dim")])
def test_bad_values_name_the_key(cfg, message):
    with pytest.raises(ValueError, match=message):
        MoEConfig(num_experts=2, **cfg)
