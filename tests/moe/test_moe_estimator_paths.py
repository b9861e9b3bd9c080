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

    layer.eval()  # eval: the training-form forward with the default vectors frozen (no update)
    before = layer.default_vectors.clone()
    step3 = torch.tensor([[0, 0.9, 0, 1.0], [0, 0, 0.7, 0.2]])  # experts 1, 2: an update would move rows 1 and 2
    o3 = all_outputs(layer, step3)
    p3 = torch.softmax(10 * step3[:, :3], -1)
    chosen3 = torch.tensor([1, 2])
    sparse3 = p3[[0, 1], chosen3].unsqueeze(1) * o3[[0, 1], chosen3]
    weight3 = p3.masked_fill(F.one_hot(chosen3, 3).bool(), 0.0)
    torch.testing.assert_close(layer(step3).y, (sparse3 + weight3 @ before).detach())
    assert torch.equal(layer.default_vectors, before)
    assert not torch.allclose(sparse3 + weight3 @ before, sparse3)  # the default term is really there


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


@pytest.mark.parametrize("k,normalize", [(1, False), (2, False), (2, True)])
def test_densemixer_router_gets_the_dense_gradient_and_experts_the_topk_gradient(k, normalize):
    """Router: dL/dz = J_w^T [<g, E_e(x)>]_e over every expert (w = p, or renormalized over the chosen k with the
    others divided by a constant r); experts: the gradients top-k gives them (their routed tokens only)."""
    torch.manual_seed(0)
    x, g = torch.randn(9, 4), torch.randn(9, 4)
    dm = make(d=4, num_experts=4, k=k, estimator="densemixer", estimator_options={"normalize": normalize})
    tk = make(d=4, num_experts=4, k=k, estimator="topk", estimator_options={"normalize": normalize})
    tk.load_state_dict(dm.state_dict())
    out = dm(x)
    (out.y * g).sum().backward()
    out_tk = tk(x)
    (out_tk.y * g).sum().backward()
    torch.testing.assert_close(out.y, out_tk.y)  # forward: plain top-k
    for name in ("w1", "b1", "w2", "b2"):
        torch.testing.assert_close(getattr(dm, name).grad, getattr(tk, name).grad)

    with torch.no_grad():
        z = dm.router(x)  # (T, E)
        p = torch.softmax(z, -1)
        chosen = p.topk(k, -1).indices
        v = torch.einsum("td,ted->te", g, all_outputs(dm, x))  # <g, E_e(x)>
        grad_z = p * (v - (p * v).sum(-1, keepdim=True))  # J_p^T v
        if normalize:
            mask = F.one_hot(chosen, 4).sum(1).bool()
            r = (p * mask).sum(-1, keepdim=True)
            dp = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)  # (T, E, E): dp_e/dz_j
            dr = (dp * mask.unsqueeze(2)).sum(1)  # (T, E): dr/dz_j
            # w_e = p_e / r on the chosen experts (r differentiated), p_e / r(const) elsewhere
            grad_z = torch.einsum("te,tej->tj", v, dp) / r - (v * p * mask).sum(-1, keepdim=True) * dr / r ** 2
        expected = grad_z.T @ x  # (E, d): dL/dW of the bias-free router
    torch.testing.assert_close(dm.router.proj.weight.grad, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(dm.router.proj.weight.grad, tk.router.proj.weight.grad)  # not the top-k gradient
