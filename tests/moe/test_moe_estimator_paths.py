"""The layer's estimator hand-off: dense (straight-through) router gradient, Default MoE EMA vectors, eval routing."""

import pytest
import torch
import torch.nn.functional as F

from smx import estimators
from smx.moe import MoEConfig, MoEFeedForward


def ffn(x, layer, e):
    """Expert e of `layer` applied by hand (relu). x (n, d) -> (n, d)."""
    return F.relu(x @ layer.w1[e] + layer.b1[e]) @ layer.w2[e] + layer.b2[e]


def make(d=4, f=6, seed=0, **cfg):
    torch.manual_seed(seed)
    return MoEFeedForward(d, f, MoEConfig(**cfg))


def all_outputs(layer, x):
    with torch.no_grad():
        return torch.stack([ffn(x, layer, e) for e in range(layer.config.num_experts)], 1)  # (T, E, d)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_straight_through_router_gradient_is_jt_of_all_expert_scores(tau):
    layer = make(num_experts=3, k=1, estimator="straight_through", estimator_options={"tau": tau})
    x = torch.randn(8, 4)
    g = torch.randn(8, 4)  # upstream gradient dL/dy
    out = layer(x, generator=torch.Generator().manual_seed(3))
    (out.y * g).sum().backward()

    outs = all_outputs(layer, x)  # (T, E, d)
    logits = x @ layer.router.proj.weight.detach().T  # (T, E)
    chosen = [int((outs[t] - out.y[t].detach()).abs().sum(-1).argmin()) for t in range(8)]
    torch.testing.assert_close(out.y.detach(), outs[torch.arange(8), chosen])  # forward: gate 1 on the sample
    q = torch.softmax(logits / tau, -1)  # (T, E)
    v = torch.einsum("td,ted->te", g, outs)  # (T, E) <g, E_i(x)>
    jac = (torch.diag_embed(q) - q.unsqueeze(2) * q.unsqueeze(1)) / tau  # (T, E, E) dq/dz, symmetric
    dz = torch.einsum("tij,tj->ti", jac, v)  # (T, E) J^T v
    torch.testing.assert_close(layer.router.proj.weight.grad, dz.T @ x)


def test_topk_router_gradient_is_the_gating_term_only():
    layer = make(num_experts=3, k=1, estimator="topk")
    x = torch.randn(8, 4)
    g = torch.randn(8, 4)
    out = layer(x)
    (out.y * g).sum().backward()
    outs = all_outputs(layer, x)
    p = torch.softmax(x @ layer.router.proj.weight.detach().T, -1)
    d = p.argmax(-1)
    score = torch.einsum("td,td->t", g, outs[torch.arange(8), d])  # <g, E_D>
    dz = p[torch.arange(8), d].unsqueeze(1) * (F.one_hot(d, 3) - p) * score.unsqueeze(1)  # p_D (e_D - p) <g, E_D>
    torch.testing.assert_close(layer.router.proj.weight.grad, dz.T @ x)


def test_default_moe_ema_and_output_after_two_steps():
    layer = make(d=4, num_experts=3, k=1, estimator="default_moe", estimator_options={"beta": 0.25})
    with torch.no_grad():
        layer.router.proj.weight.copy_(10 * torch.eye(3, 4))  # logits = 10 * x[:, :3]
    step1 = torch.tensor([[1.0, 0, 0, 0.5], [0.9, 0, 0, -1.0], [0, 1.0, 0, 2.0]])  # experts 0, 0, 1
    step2 = torch.tensor([[0.8, 0, 0, 0.3], [0, 0, 1.0, -0.5]])  # experts 0, 2 ; expert 1 idle
    assert layer.default_vectors.shape == (3, 4) and layer.default_vectors.dtype == torch.float32
    layer(step1)
    o1 = all_outputs(layer, step1)
    expected = torch.zeros(3, 4)
    expected[0] = (o1[0, 0] + o1[1, 0]) / 2
    expected[1] = o1[2, 1]
    torch.testing.assert_close(layer.default_vectors, expected)

    out = layer(step2)
    o2 = all_outputs(layer, step2)
    expected[0] = 0.25 * expected[0] + 0.75 * o2[0, 0]  # EMA: beta * old + (1 - beta) * mean
    expected[2] = o2[1, 2]  # first tokens of expert 2: initialized to the mean
    torch.testing.assert_close(layer.default_vectors, expected)  # expert 1 (no tokens) unchanged
    assert layer.default_initialized.tolist() == [True, True, True]

    p = torch.softmax(10 * step2[:, :3], -1)
    chosen = torch.tensor([0, 2])
    sparse = p[[0, 1], chosen].unsqueeze(1) * o2[[0, 1], chosen]
    default_weight = p.masked_fill(F.one_hot(chosen, 3).bool(), 0.0)
    torch.testing.assert_close(out.y, sparse + default_weight @ expected)  # updated BEFORE use
    (out.y.sum()).backward()
    assert layer.router.proj.weight.grad[1].abs().sum() > 0  # the idle expert's logit gets a gradient

    layer.eval()  # eval: plain top-k, no update
    before = layer.default_vectors.clone()
    torch.testing.assert_close(layer(step2).y, sparse.detach())
    assert torch.equal(layer.default_vectors, before)


def test_default_moe_state_dict_round_trip():
    layer = make(num_experts=3, estimator="default_moe")
    layer(torch.randn(5, 4))
    twin = MoEFeedForward(4, 6, layer.config)
    twin.load_state_dict(layer.state_dict())
    assert torch.equal(twin.default_vectors, layer.default_vectors)
    assert torch.equal(twin.default_initialized, layer.default_initialized)


def _k_for(name):
    try:
        estimators.get(name).validate(2, 4)
        return 2
    except ValueError:
        return 1


@pytest.mark.parametrize("name", estimators.names())
def test_every_estimator_trains_and_evaluates_deterministically(name):
    k = _k_for(name)
    layer = make(num_experts=4, k=k, estimator=name, capacity_factor=1.0, input_jitter=0.1, activation_dropout=0.2)
    x = torch.randn(3, 5, 4)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[0, 3:] = True
    out = layer(x, padding_mask=pad, generator=torch.Generator().manual_seed(0))
    (out.y.square().sum() + out.balance_loss + out.z_loss).backward()
    assert torch.isfinite(layer.router.proj.weight.grad).all() and layer.router.proj.weight.grad.abs().sum() > 0
    assert out.stats.load.sum().item() == pytest.approx(1.0)
    layer.eval()
    with torch.no_grad():
        a = layer(x, padding_mask=pad)
        b = layer(x, padding_mask=pad, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.y, b.y) and torch.equal(a.balance_loss, b.balance_loss)
