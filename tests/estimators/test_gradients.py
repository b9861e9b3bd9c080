"""Estimator router gradients checked against exact enumerated gradients and against their defining formulas."""

import pytest
import torch

from smx import estimators
from smx.diagnose import combine, exact_gradient, make_problem, sample_gradients, token_loss
from smx.estimators.base import keep_mask, masked_softmax
from smx.estimators.sparsemixer import SparseMixerGate

HUGE_EPS = 1e6  # nothing is masked


def mean_and_se(problem, est, samples, seed=0):
    grads = sample_gradients(problem, est, samples, torch.Generator().manual_seed(seed)).flatten(1)
    return grads.mean(0), grads.std(0) / samples**0.5


@pytest.mark.parametrize("name", ["sparsemixer_1st", "sparsemixer", "sparsemixer_inf"])
def test_linear_loss_mean_gradient_is_exact(name):
    """The Euler rule is exact for a linear per-token loss: E_D[2 <a, O_D> p_D (e_D - p)] = grad E_D[L]."""
    problem = make_problem(experts=4, k=1, tokens=16, loss="linear", seed=1)
    exact = exact_gradient(problem).flatten()
    mean, se = mean_and_se(problem, estimators.get(name, jitter_eps=HUGE_EPS), 20000)
    z = (mean - exact).abs() / (se + 1e-12)
    assert z.max() < 5.0, f"max z-score {z.max():.2f}"
    assert (mean - exact).norm() / exact.norm() < 0.03


def test_linear_loss_v2_mean_gradient_is_half_exact():
    """GRIN's per-stage rule has no factor 2 (as its reference code): half of the exact gradient."""
    problem = make_problem(experts=4, k=1, tokens=16, loss="linear", seed=1)
    exact = exact_gradient(problem).flatten()
    mean, se = mean_and_se(problem, estimators.get("sparsemixer_v2", jitter_eps=HUGE_EPS), 20000)
    z = (mean - exact / 2).abs() / (se + 1e-12)
    assert z.max() < 5.0
    assert (mean - exact).norm() / exact.norm() > 0.4  # and clearly not the full gradient


def test_exact_gradient_matches_finite_differences():
    problem = make_problem(experts=3, k=2, tokens=5, loss="mlp", seed=2)
    exact = exact_gradient(problem)

    def objective(weight):
        import itertools
        p = torch.softmax(problem.x @ weight.T, -1)
        total = 0.0
        for seq in itertools.permutations(range(3), 2):
            q1 = p[:, seq[0]]
            q2 = p[:, seq[1]] / (1 - q1)
            y = q1[:, None] * problem.outputs[:, seq[0]] + q2[:, None] * problem.outputs[:, seq[1]]
            total = total + (q1 * q2 * token_loss(problem, y)).sum()
        return total

    h = 1e-6
    fd = torch.zeros_like(exact)
    for idx in [(0, 0), (1, 3), (2, 7)]:
        w1, w2 = problem.weight.clone(), problem.weight.clone()
        w1[idx] += h
        w2[idx] -= h
        fd[idx] = (objective(w1) - objective(w2)) / (2 * h)
        assert abs(fd[idx] - exact[idx]) < 1e-6 * max(1.0, abs(exact[idx].item()))


def test_topk_gives_the_single_term_gating_gradient():
    problem = make_problem(experts=5, k=1, tokens=12, loss="linear", seed=3)
    logits = (problem.x @ problem.weight.T).float().requires_grad_(True)
    r = estimators.get("topk")(logits, k=1, training=True)
    y = combine(r, problem.outputs.float(), problem.outputs.float().mean(0))
    (grad,) = torch.autograd.grad(token_loss(problem, y.double()).sum(), logits)
    p = torch.softmax(logits.detach().double(), -1)
    d = p.argmax(-1)
    rows = torch.arange(12)
    inner = (problem.target * problem.outputs[rows, d]).sum(-1)  # <a, O_D>
    expected = inner[:, None] * p[rows, d][:, None] * (torch.nn.functional.one_hot(d, 5) - p)
    assert torch.equal(r.expert_index[:, 0], d)
    torch.testing.assert_close(grad.double(), expected, rtol=1e-5, atol=1e-6)


def formula_check(name, k, tau=1.0):
    """Per-sample logits gradient of `name` under a quadratic loss against its defining formula."""
    torch.manual_seed(0)
    T, E, D = 40, 5, 3
    logits = (torch.randn(T, E) * 0.3 + 1.0).requires_grad_(True)
    outputs = torch.randn(T, E, D)
    target = torch.randn(T, D)
    defaults = torch.randn(E, D)
    r = estimators.get(name)(logits, k=k, training=True, generator=torch.Generator().manual_seed(5))
    y = combine(r, outputs, defaults)
    y.retain_grad()
    loss = 0.5 * ((y - target) ** 2).sum()
    loss.backward()
    g = (y - target).detach()  # (T, D) upstream gradient dL/dy
    return logits, outputs, defaults, r, g


@pytest.mark.parametrize("name,factor", [("sparsemixer", 2.0), ("sparsemixer_1st", 2.0), ("sparsemixer_inf", 2.0)])
def test_sparsemixer_backward_formula(name, factor):
    logits, outputs, _, r, g = formula_check(name, 1)
    z = logits.detach()
    p = masked_softmax(z, keep_mask(z, 0.1))
    d = r.expert_index[:, 0]
    rows = torch.arange(len(d))
    inner = (g * outputs[rows, d]).sum(-1)  # <g, O_D>
    expected = factor * inner[:, None] * p[rows, d][:, None] * (torch.nn.functional.one_hot(d, 5) - p)
    torch.testing.assert_close(logits.grad, expected, rtol=1e-5, atol=1e-6)


def test_sparsemixer_v2_backward_formula_two_stages():
    logits, outputs, _, r, g = formula_check("sparsemixer_v2", 2)
    z = logits.detach()
    expected = torch.zeros_like(z)
    chosen = torch.zeros_like(z, dtype=torch.bool)
    rows = torch.arange(z.shape[0])
    for stage in range(2):
        p = masked_softmax(z, keep_mask(z, 0.01, excluded=chosen if stage else None))
        d = r.expert_index[:, stage]
        inner = (g * outputs[rows, d]).sum(-1)
        expected += inner[:, None] * p[rows, d][:, None] * (torch.nn.functional.one_hot(d, 5) - p)
        chosen[rows, d] = True
    torch.testing.assert_close(logits.grad, expected, rtol=1e-5, atol=1e-6)


def test_straight_through_backward_is_dense_jacobian_product():
    logits, outputs, _, r, g = formula_check("straight_through", 1)
    q = torch.softmax(logits.detach(), -1)
    inner = torch.einsum("td,ted->te", g, outputs)  # <g, O_i> for every expert
    expected = q * (inner - (q * inner).sum(-1, keepdim=True))  # J^T inner
    torch.testing.assert_close(logits.grad, expected, rtol=1e-5, atol=1e-6)
    assert torch.all(r.gate == 1)


def test_default_moe_sends_gradient_through_every_probability():
    logits, outputs, defaults, r, g = formula_check("default_moe", 1)
    p = torch.softmax(logits.detach(), -1)
    d = r.expert_index[:, 0]
    rows = torch.arange(len(d))
    inner = torch.einsum("td,ed->te", g, defaults)  # <g, d_i>
    inner[rows, d] = (g * outputs[rows, d]).sum(-1)  # <g, O_D> for the chosen expert
    expected = p * (inner - (p * inner).sum(-1, keepdim=True))
    torch.testing.assert_close(logits.grad, expected, rtol=1e-5, atol=1e-6)


def test_masked_experts_get_exactly_zero_gradient():
    logits = torch.tensor([[4.0, 3.9, 1.0, -2.0], [1.0, 2.0, 1.95, 0.5]], requires_grad=True)
    for name in ("sparsemixer", "sparsemixer_1st", "sparsemixer_inf", "sparsemixer_v2"):
        logits.grad = None
        est = estimators.get(name, jitter_eps=0.1)
        r = est(logits, k=1, training=True, generator=torch.Generator().manual_seed(0))
        (r.gate * torch.tensor([[1.3], [-0.7]])).sum().backward()
        keep = keep_mask(logits.detach(), 0.1)
        assert keep.tolist() == [[True, True, False, False], [False, True, True, False]]
        assert torch.all(logits.grad[~keep] == 0.0), name
        assert torch.all(logits.grad[keep] != 0.0), name


def test_zero_eps_keeps_only_the_argmax():
    z = torch.tensor([[0.5, 2.0, 1.99, -1.0]])
    assert keep_mask(z, 0.0).tolist() == [[False, True, False, False]]
    r = estimators.get("sparsemixer", jitter_eps=0.0)(z, k=1, training=True)
    assert r.expert_index.item() == 1 and r.gate.item() == 1.0


@pytest.mark.parametrize("grad_scale", [1.0, 2.0])
def test_gradcheck_sparsemixer_gate(grad_scale):
    """Float64 gradcheck of the one custom autograd.Function, where its backward is the exact derivative (s = grad_scale)."""
    torch.manual_seed(0)
    logits = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    keep = torch.rand(6, 5) > 0.3
    index = torch.stack([torch.nonzero(row)[0] if row.any() else torch.tensor([0]) for row in keep]).view(6, 1)
    keep[torch.arange(6), index[:, 0]] = True
    scale = torch.full((6, 1), grad_scale, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: SparseMixerGate.apply(z, keep, index, scale, grad_scale), (logits,))
