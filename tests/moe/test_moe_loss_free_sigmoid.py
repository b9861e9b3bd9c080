"""Loss-free balancing and sigmoid gating (issue 16 parts 2 and 4): the bias update, selection vs gates, resumes."""

import pytest
import torch

from smx import estimators
from smx.moe import MoEConfig, MoEFeedForward
from smx.moe.layer import loss_free_step


def test_bias_update_on_hand_made_counts():
    step = loss_free_step(torch.tensor([5.0, 1.0, 2.0, 0.0]), 1e-3)  # mean 2: over-loaded down, under-loaded up
    torch.testing.assert_close(step, torch.tensor([-1e-3, 1e-3, 0.0, 1e-3]))


def test_the_bias_selects_and_the_unbiased_scores_gate():
    z = torch.tensor([[2.0, 1.0, 0.0]], requires_grad=True)
    p = torch.softmax(z.detach(), -1)
    bias = torch.tensor([0.0, 0.5, 0.0])  # p0 - p1 = 0.42 < 0.5: expert 1 wins the selection
    r = estimators.get("topk")(z, k=1, training=True, bias=bias)
    assert r.expert_index.tolist() == [[1]]
    torch.testing.assert_close(r.gate, p[:, 1:2])  # the gate is p_1, not p_1 + b_1
    r.gate.sum().backward()
    assert z.grad.abs().sum() > 0
    dm = estimators.get("densemixer")(z.detach(), k=1, training=True, bias=bias)
    assert dm.expert_index.tolist() == [[1]]


def test_sigmoid_gates_are_renormalized_over_k_only_when_k_is_above_one():
    z = torch.tensor([[2.0, -1.0, 0.5, 0.0]])
    s = torch.sigmoid(z)
    top2 = estimators.get("topk")(z, k=2, training=False, score="sigmoid")
    assert top2.expert_index.tolist() == [[0, 2]]
    torch.testing.assert_close(top2.gate, s[:, [0, 2]] / s[:, [0, 2]].sum())
    torch.testing.assert_close(top2.probs, s / s.sum())  # what the balance loss and statistics see
    top1 = estimators.get("topk")(z, k=1, training=False, score="sigmoid")
    torch.testing.assert_close(top1.gate, s[:, [0]])  # not renormalized: that would be the constant gate 1


@pytest.mark.parametrize("name, score, balance, message", [
    ("densemixer", "sigmoid", "loss", "defined on the softmax"),
    ("sparsemixer", "sigmoid", "loss", "defined on the softmax"),
    ("default_moe", "sigmoid", "loss", "defined on the softmax"),
    ("sparsemixer", "softmax", "loss_free", "does not choose its experts by a top-k"),
    ("sparsemixer_v2", "softmax", "loss_free", "does not choose its experts by a top-k"),
    ("straight_through", "softmax", "loss_free", "does not choose its experts by a top-k"),
])
def test_combinations_without_a_meaning_are_refused(name, score, balance, message):
    k = 2 if name == "sparsemixer_v2" else 1
    with pytest.raises(ValueError, match=message):
        MoEFeedForward(4, 8, MoEConfig(num_experts=4, k=k, estimator=name, score=score, balance=balance))


def layer(seed=0):
    torch.manual_seed(seed)
    return MoEFeedForward(4, 8, MoEConfig(num_experts=4, k=1, estimator="topk", balance="loss_free",
                                          bias_update_rate=0.01))


def test_the_bias_moves_after_each_update_from_all_its_micro_batches():
    m = layer()
    x1, x2 = torch.randn(10, 4), torch.randn(6, 4)
    m.set_num_updates(0)
    counts = torch.zeros(4)
    for x in (x1, x2):  # two micro-batches of update 0
        expected_index = m.estimator(m.router(x), k=1, training=True, bias=m.selection_bias).expert_index
        counts += torch.bincount(expected_index.reshape(-1), minlength=4).float()
        m(x)
        m.set_num_updates(0)  # fairseq calls it again before the second micro-batch: no change yet
        assert torch.equal(m.selection_bias, torch.zeros(4))
    m.eval()
    m(torch.randn(5, 4))  # validation: not counted
    m.train()
    m.set_num_updates(1)
    torch.testing.assert_close(m.selection_bias, loss_free_step(counts, 0.01))
    assert torch.equal(m.pending_counts, torch.zeros(4, dtype=torch.long))


def test_a_resumed_layer_selects_as_an_uninterrupted_one():
    a, xs = layer(), [torch.randn(8, 4) for _ in range(6)]
    for u, x in enumerate(xs[:3]):
        a.set_num_updates(u)
        a(x)
    b = layer(seed=1)
    b.load_state_dict(a.state_dict())  # a checkpoint after update 2: bias, pending counts and their update
    for u, x in enumerate(xs[3:], start=3):
        for m in (a, b):
            m.set_num_updates(u)
            m(x)
        assert torch.equal(a.selection_bias, b.selection_bias)
    assert a.selection_bias.abs().sum() > 0
