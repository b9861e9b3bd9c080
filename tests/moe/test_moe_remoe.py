"""ReMoE: ReLU gates, dispatch over the nonzero pairs, the L1 penalty and its adaptive coefficient (values)."""

import pytest
import torch

from smx import estimators
from smx.moe import MoEConfig, MoEFeedForward
from smx.moe.dispatch import expert_ffn, plan_dispatch, plan_dispatch_static
from smx.moe.losses import relu_l1_balance
from smx.moe.per_update import ReluControl, relu_control_step


def remoe_layer(seed=0, num_experts=4, k=1, **config):
    torch.manual_seed(seed)
    return MoEFeedForward(6, 12, MoEConfig(num_experts=num_experts, k=k, estimator="remoe", **config))


def test_gates_are_relu_of_the_logits_and_the_gradient_is_the_relu_mask():
    z = torch.tensor([[1.5, -0.5, 0.25, 0.0], [-1.0, -2.0, -0.1, -3.0]], requires_grad=True)
    routing = estimators.get("remoe")(z, k=1, training=True)
    torch.testing.assert_close(routing.gate, torch.tensor([[1.5, 0.0, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    assert routing.active.tolist() == [[True, False, True, False], [False, False, False, False]]
    torch.testing.assert_close(routing.probs[0], torch.tensor([1.5, 0, 0.25, 0]) / 1.75)
    assert torch.equal(routing.probs[1], torch.zeros(4))  # no active expert: no distribution, no NaN
    g = torch.randn(2, 4)
    (routing.gate * g).sum().backward()
    torch.testing.assert_close(z.grad, g * (z.detach() > 0))  # dL/dz = dL/dg * 1[z > 0]
    est = estimators.get("remoe")
    assert est.no_gradient_tokens(z, routing, 1).tolist() == [False, True]


def test_the_l1_is_the_switch_formula_on_the_gates_with_nonzero_counts():
    gate = torch.tensor([[0.5, 0.0, 1.0], [0.0, 0.0, 2.0], [0.25, 0.75, 0.0], [9.0, 9.0, 9.0]])
    valid = torch.tensor([True, True, True, False])
    active = gate > 0
    # T = 3 routed tokens, k = 1: n = (2, 1, 2), mean gates = (0.75, 0.75, 3) / 3
    expected = 3 * (0.75 / 3 * 2 + 0.75 / 3 * 1 + 3.0 / 3 * 2) / (3 * 1)
    torch.testing.assert_close(relu_l1_balance(gate, active, 1, valid), torch.tensor(expected))
    torch.testing.assert_close(relu_l1_balance(gate[:3], active[:3], 1), torch.tensor(expected))
    # every expert on k/E of the tokens: the plain L1 per token
    balanced = torch.tensor([[0.3, 0.0], [0.0, 0.7]])
    torch.testing.assert_close(relu_l1_balance(balanced, balanced > 0, 1), balanced.sum(1).mean())


@pytest.mark.parametrize("sync_free", [False, True])
def test_each_token_gets_the_gated_sum_of_its_active_experts_only(sync_free):
    m = remoe_layer()
    m.sync_free = sync_free
    x = torch.randn(2, 5, 6)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[1, 3:] = True
    out = m(x, padding_mask=pad)
    flat, valid = x.reshape(-1, 6), ~pad.reshape(-1)
    gate = torch.relu(m.router(flat))  # (10, 4)
    expected = torch.zeros(10, 6)
    for t in range(10):
        for e in range(4):
            if valid[t] and gate[t, e] > 0:
                expected[t] += gate[t, e] * expert_ffn(flat[t:t + 1], m.w1[e], m.b1[e], m.w2[e], m.b2[e], "relu",
                                                       0.0, True)[0]
    torch.testing.assert_close(out.y.reshape(10, 6), expected, rtol=1e-5, atol=1e-6)
    active = (gate > 0) & valid.unsqueeze(1)
    torch.testing.assert_close(out.stats.active, active.sum(1)[valid].float().mean())
    torch.testing.assert_close(out.stats.sparsity, 1 - active.sum(1)[valid].float().mean() / 4)
    torch.testing.assert_close(out.stats.load, active.sum(0).float() / active.sum())
    assert float(out.balance_loss) == 0.0  # no balance loss: the penalty balances
    torch.testing.assert_close(out.penalty, 1e-8 * relu_l1_balance(gate, gate > 0, 1, valid))  # lambda_0


def test_the_plan_holds_the_active_pairs_only_and_respects_the_capacity():
    index = torch.arange(3).expand(4, 3)  # (4 tokens, every one of 3 experts)
    active = torch.tensor([[True, False, True], [False, False, True], [True, True, True], [False, False, False]])
    plan = plan_dispatch(index, 3, None, active=active)
    assert plan.token.tolist() == [0, 2, 2, 0, 1, 2] and plan.expert.tolist() == [0, 0, 1, 2, 2, 2]
    assert plan.counts.tolist() == [2, 1, 3] and torch.equal(plan.kept, active)
    capped = plan_dispatch(index, 3, 2, active=active)  # expert 2 keeps its first two tokens
    assert capped.token.tolist() == [0, 2, 2, 0, 1] and capped.counts.tolist() == [2, 1, 3]
    assert capped.kept[2].tolist() == [True, True, False]
    static = plan_dispatch_static(index, 3, 2, active=active)
    assert static.rows == 12 and int(static.row_valid.sum()) == 5
    assert static.token[:5].tolist() == capped.token.tolist() and torch.equal(static.kept, capped.kept)


def test_the_coefficient_moves_by_the_sign_of_the_sparsity_gap_on_hand_made_counts():
    E, k = 4, 1  # target sparsity 0.75: one nonzero gate in four
    assert relu_control_step(torch.tensor(30), torch.tensor(80), E, k) == 1  # S = 0.625 < 0.75: more L1
    assert relu_control_step(torch.tensor(10), torch.tensor(80), E, k) == -1  # S = 0.875 > 0.75: less L1
    assert relu_control_step(torch.tensor(20), torch.tensor(80), E, k) == 0  # on target
    assert relu_control_step(torch.tensor(0), torch.tensor(0), E, k) == 0  # nothing counted
    c = ReluControl(E, k, 1e-8, 1.2)
    c.set_num_updates(0)
    for nonzero, pairs, exponent in ((30, 80, 1), (35, 80, 2), (5, 80, 1)):
        c.nonzero.fill_(nonzero)
        c.pairs.fill_(pairs)
        c.set_num_updates(c._counted_update_host + 1)
        assert int(c.exponent) == exponent and int(c.nonzero) == 0 and int(c.pairs) == 0
    torch.testing.assert_close(c.coefficient(), torch.tensor(1e-8 * 1.2))


def test_one_control_counts_every_layer_and_micro_batch_of_an_update():
    control = ReluControl(4, 1, 1e-8, 1.2)
    a = MoEFeedForward(6, 12, MoEConfig(num_experts=4, estimator="remoe"), relu_control=control)
    b = MoEFeedForward(6, 12, MoEConfig(num_experts=4, estimator="remoe"), relu_control=control)
    assert a.relu_control is b.relu_control
    xs = [torch.randn(7, 6), torch.randn(3, 6)]
    nonzero = 0
    for m in (a, b):
        m.set_num_updates(0)  # each layer calls the shared control: it steps once per update
    for x in xs:
        for m in (a, b):
            nonzero += int((m.router(x) > 0).sum())
            m(x)
    assert int(control.nonzero) == nonzero and int(control.pairs) == 2 * 10 * 4
    expected = relu_control_step(torch.tensor(nonzero), torch.tensor(80), 4, 1)
    for m in (a, b):
        m.set_num_updates(1)
    assert int(control.exponent) == int(expected)
    with pytest.raises(ValueError, match="relu_control is for E=4"):
        MoEFeedForward(6, 12, MoEConfig(num_experts=8, estimator="remoe"), relu_control=control)


def test_sparsity_converges_to_the_target_on_a_toy_problem():
    """A dense-preferring regression task: while lambda is small about half the gates stay on; the adaptive L1
    drives the sparsity to 1 - k/E = 0.75 and keeps it there. (A router bias: zero-mean inputs through a bias-free
    linear router keep half their logits positive whatever W; a transformer's hidden states are not centred.)"""
    torch.manual_seed(0)
    m = MoEFeedForward(8, 16, MoEConfig(num_experts=4, k=1, estimator="remoe", router_bias=True))
    teacher = torch.nn.Linear(8, 8)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    sparsity = []
    for step in range(400):
        m.set_num_updates(step)
        x = torch.randn(64, 8)
        out = m(x)
        loss = (out.y - teacher(x).detach()).square().mean() + out.penalty
        opt.zero_grad()
        loss.backward()
        opt.step()
        sparsity.append(float(out.stats.sparsity))
    assert sum(sparsity[40:80]) / 40 < 0.6  # lambda still small: dense (the task wants every expert)
    late = sparsity[-100:]
    assert abs(sum(late) / len(late) - 0.75) < 0.06, sum(late) / len(late)
    assert int(m.relu_control.exponent) > 50  # lambda grew by orders of magnitude from 1e-8


def test_a_resumed_layer_continues_as_the_uninterrupted_one():
    a, xs = remoe_layer(), [torch.randn(8, 6) for _ in range(6)]
    for u, x in enumerate(xs[:3]):
        a.set_num_updates(u)
        a(x)
    b = remoe_layer(seed=1)
    b.load_state_dict(a.state_dict())
    for u, x in enumerate(xs[3:], start=3):
        outs = []
        for m in (a, b):
            m.set_num_updates(u)
            outs.append(m(x))
        assert torch.equal(outs[0].penalty, outs[1].penalty)
    assert torch.equal(a.relu_control.exponent, b.relu_control.exponent) and int(a.relu_control.exponent) != 0


def test_evaluation_routes_the_same_way_and_counts_nothing():
    m = remoe_layer()
    x = torch.randn(9, 6)
    train_y = m(x).y
    before = int(m.relu_control.pairs)
    m.eval()
    out = m(x)
    torch.testing.assert_close(out.y, train_y)
    assert int(m.relu_control.pairs) == before and float(out.penalty) == 0.0


@pytest.mark.parametrize("config, message", [
    (dict(score="sigmoid"), "gates with ReLU"),
    (dict(balance="loss_free"), "adaptive L1 penalty"),
    (dict(balance="global_loss"), "adaptive L1 penalty"),
    (dict(k=4), "makes it 0"),
    (dict(estimator_options={"l1_multiplier": 1.0}), "l1_multiplier must be a number > 1"),
    (dict(estimator_options={"l1_coeff": 0}), "l1_coeff must be a number > 0"),
])
def test_meaningless_remoe_settings_are_refused(config, message):
    with pytest.raises(ValueError, match=message):
        MoEFeedForward(6, 12, MoEConfig(**{"num_experts": 4, "estimator": "remoe", **config}))
