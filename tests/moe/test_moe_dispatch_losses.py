"""Pure functions of smx.moe: capacity, index dispatch/combine, aux losses, routing statistics (hand-computed)."""

import math

import pytest
import torch

from smx.moe.dispatch import all_experts, combine, expert_capacity, expert_ffn, plan_dispatch, run_experts
from smx.moe.losses import load_balance_loss, router_entropy, routing_stats, z_loss


def test_capacity_rounds_up_and_ignores_float_noise():
    assert expert_capacity(10, 4, 1, 1.0) == 3  # ceil(2.5)
    assert expert_capacity(10, 4, 2, 1.0) == 5  # ceil(5.0)
    assert expert_capacity(10, 1, 1, 1.1) == 11  # 1.1 * 10 = 11.000000000000002 in floats
    assert expert_capacity(3, 8, 1, 0.1) == 1  # never 0 for a non-empty batch
    assert expert_capacity(0, 8, 1, 1.0) == 0
    assert expert_capacity(10, 4, 1, None) is None


# assignments a = t * k + j: (t0: e0, e1) (t1: e0, e2) (t2: e1, e0) (t3: e0, e1)
INDEX = torch.tensor([[0, 1], [0, 2], [1, 0], [0, 1]])


def test_dispatch_position_policy_keeps_first_assignments_in_token_order():
    plan = plan_dispatch(INDEX, 3, capacity=2)
    # expert 0 gets a0 a2 a5 a6 -> keeps a0 a2 ; expert 1 gets a1 a4 a7 -> keeps a1 a4 ; expert 2 gets a3
    assert plan.kept.tolist() == [[True, True], [True, True], [True, False], [False, False]]
    assert plan.assignment.tolist() == [0, 2, 1, 4, 3]
    assert plan.token.tolist() == [0, 1, 0, 2, 1]
    assert plan.expert.tolist() == [0, 0, 1, 1, 2]
    assert plan.sizes == (2, 2, 1)
    assert plan.counts.tolist() == [4, 3, 1]


def test_dispatch_probability_policy_keeps_highest_priority():
    priority = torch.tensor([[0.1, 0.9], [0.2, 0.5], [0.3, 0.4], [0.6, 0.8]])
    plan = plan_dispatch(INDEX, 3, capacity=2, priority=priority)
    # expert 0: a0 .1, a2 .2, a5 .4, a6 .6 -> keeps a6 a5 ; expert 1: a1 .9, a4 .3, a7 .8 -> keeps a1 a7
    assert plan.kept.tolist() == [[False, True], [False, True], [False, True], [True, True]]
    assert plan.sizes == (2, 2, 1)
    assert sorted(plan.assignment.tolist()) == [1, 3, 5, 6, 7]
    assert plan.expert.tolist() == [0, 0, 1, 1, 2]


def test_dispatch_dropless_keeps_everything_grouped_by_expert():
    plan = plan_dispatch(INDEX, 4, capacity=None)
    assert plan.kept.all()
    assert plan.sizes == (4, 3, 1, 0)
    assert plan.expert.tolist() == [0, 0, 0, 0, 1, 1, 1, 2]
    assert plan.token.tolist() == [0, 1, 2, 3, 0, 2, 3, 1]  # token order inside each expert (stable)


def _weights(E=3, d=4, f=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(E, d, f, generator=g), torch.randn(E, f, generator=g), torch.randn(E, f, d, generator=g),
            torch.randn(E, d, generator=g))


def test_run_and_combine_equal_per_token_loop():
    w1, b1, w2, b2 = _weights()
    x = torch.randn(4, 4)
    gate = torch.rand(4, 2)
    plan = plan_dispatch(INDEX, 3, capacity=2)
    out = run_experts(x, plan, w1, b1, w2, b2, "gelu", 0.0, False)
    y = combine(out, plan, gate, 4)
    expected = torch.zeros(4, 4)
    for t in range(4):
        for j in range(2):
            if plan.kept[t, j]:
                e = INDEX[t, j]
                h = torch.nn.functional.gelu(x[t] @ w1[e] + b1[e])
                expected[t] += gate[t, j] * (h @ w2[e] + b2[e])
    torch.testing.assert_close(y, expected)
    assert torch.equal(y[3], torch.zeros(4))  # token 3 fully dropped: 0 (the residual carries it)


def test_all_experts_matches_expert_ffn():
    w1, b1, w2, b2 = _weights()
    x = torch.randn(6, 4)
    dense = all_experts(x, w1, b1, w2, b2, "relu", 0.0, False)  # (6, 3, 4)
    for e in range(3):
        torch.testing.assert_close(dense[:, e], expert_ffn(x, w1[e], b1[e], w2[e], b2[e], "relu", 0.0, False))


PROBS = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.5, 0.25, 0.25]])


def test_load_balance_loss_hand_value():
    index = torch.tensor([[0], [1], [2], [0]])
    # f = (1/2, 1/4, 1/4), P = (0.375, 0.3125, 0.3125): 3 * (0.1875 + 0.078125 + 0.078125)
    assert load_balance_loss(PROBS, index).item() == pytest.approx(1.03125)
    uniform = torch.full((4, 4), 0.25)
    assert load_balance_loss(uniform, torch.tensor([[0, 1], [2, 3], [0, 1], [2, 3]])).item() == pytest.approx(1.0)


def test_load_balance_loss_gradient_goes_to_probs_only():
    probs = PROBS.clone().requires_grad_()
    load_balance_loss(probs, torch.tensor([[0], [1], [2], [0]])).backward()
    # d/dp_ti = E * f_i / T
    expected = (3 * torch.tensor([0.5, 0.25, 0.25]) / 4).expand(4, 3)
    torch.testing.assert_close(probs.grad, expected)


def test_z_loss_hand_value():
    logits = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, -30.0, -30.0]])
    lse = [math.log(3), 1 + math.log(3), 2 + math.log(1 + 2 * math.exp(-32))]
    assert z_loss(logits).item() == pytest.approx(sum(v * v for v in lse) / 3, rel=1e-6)


def test_routing_stats_hand_values():
    index = torch.tensor([[0, 2], [0, 2], [2, 0], [0, 2]])  # expert 1 unused
    kept = torch.tensor([[True, True], [True, False], [True, True], [False, True]])
    stats = routing_stats(PROBS, index, kept)
    torch.testing.assert_close(stats.load, torch.tensor([0.5, 0.0, 0.5]))
    assert stats.unused.item() == 1
    assert stats.dropped.item() == pytest.approx(2 / 8)
    entropy = -sum(p * math.log(p) for row in PROBS.tolist() for p in row) / 4
    assert stats.entropy.item() == pytest.approx(entropy, rel=1e-6)
    assert router_entropy(torch.tensor([[1.0, 0.0]])).item() == 0.0  # 0 log 0 = 0


def test_empty_batch_gives_zeros_not_nan():
    probs = torch.zeros(0, 3)
    index = torch.zeros(0, 1, dtype=torch.long)
    assert load_balance_loss(probs, index).item() == 0.0
    assert z_loss(torch.zeros(0, 3)).item() == 0.0
    stats = routing_stats(probs, index, torch.zeros(0, 1, dtype=torch.bool))
    assert stats.dropped.item() == 0.0 and stats.entropy.item() == 0.0 and stats.unused.item() == 3
