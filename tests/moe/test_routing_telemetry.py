"""Routing telemetry (issue 16 part 6): imbalance, tokens without router gradient, router-logit scale."""

import pytest
import torch

from smx import estimators
from smx.moe import MoEConfig, MoEFeedForward
from smx.moe.losses import routing_stats


def test_stats_hand_values():
    probs = torch.full((4, 4), 0.25)
    index = torch.tensor([[0], [0], [1], [2]])  # loads 1/2, 1/4, 1/4, 0
    logits = torch.tensor([[1.0, -1.0, 1.0, -1.0]] * 4)
    s = routing_stats(probs, index, torch.ones(4, 1, dtype=torch.bool), logits,
                      torch.tensor([True, False, False, True]))
    assert s.imbalance.item() == pytest.approx(2.0)  # max 1/2 over mean 1/4
    assert s.no_gradient.item() == pytest.approx(0.5)
    assert s.logit_rms.item() == pytest.approx(1.0)
    empty = routing_stats(torch.zeros(0, 4), torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.bool),
                          torch.zeros(0, 4))
    assert empty.imbalance.item() == 0 and empty.no_gradient.item() == 0 and empty.logit_rms.item() == 0


def test_sparsemixer_tokens_with_a_singleton_mask_get_no_router_gradient():
    # eps 0.1: expert i stays iff (z* - z_i) / max(|z_i|, z*) <= 0.2
    logits = torch.tensor([[5.0, 1.0, 0.0, 0.0],   # only the argmax within the band: constant gate
                           [5.0, 4.5, 0.0, 0.0]])  # (5 - 4.5) / 5 = 0.1 <= 0.2: two kept
    est = estimators.get("sparsemixer", jitter_eps=0.1)
    routing = est(logits, k=1, training=True, generator=torch.Generator().manual_seed(0))
    assert est.no_gradient_tokens(logits, routing, 1).tolist() == [True, False]
    assert estimators.get("topk").no_gradient_tokens(logits, routing, 1) is None


@pytest.mark.parametrize("training, expected", [(True, 0.5), (False, 0.0)])
def test_layer_reports_the_no_gradient_fraction_in_training(training, expected):
    torch.manual_seed(0)
    layer = MoEFeedForward(4, 8, MoEConfig(num_experts=4, k=1, estimator="sparsemixer"))
    with torch.no_grad():
        layer.router.proj.weight.copy_(torch.eye(4) * 5)
    x = torch.tensor([[1.0, 0.2, 0.0, 0.0], [1.0, 0.9, 0.0, 0.0]])  # logits 5, 1 | 5, 4.5
    layer.train(training)
    out = layer(x)
    assert out.stats.no_gradient.item() == pytest.approx(expected)
    assert out.stats.logit_rms.item() == pytest.approx(((25 + 1 + 25 + 4.5 ** 2) / 8) ** 0.5, rel=1e-5)
