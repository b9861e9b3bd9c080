"""The optimized expert paths (fused CPU kernel, grouped GEMM, per-expert loop) against a straightforward reference.

The reference computes every expert on every token and masks: y_t = sum_{j, kept} gate_tj * FFN_{e_tj}(x_t), with the
capacity applied by explicit Python loops (position: first C assignments a = t * k + j of each expert; probability:
C highest router probabilities, ties by a). Values AND gradients (input, expert weights, router) must agree. No timing.
"""

import pytest
import torch
import torch.nn.functional as F

from smx.moe import MoEConfig, MoEFeedForward
from smx.moe.dispatch import combine, expert_capacity, plan_dispatch, run_experts

BACKENDS = ("fused", "grouped_mm", "loop")


def reference_kept(index, probs, capacity, policy):
    """(T, k) bool: which assignments survive the capacity, by plain loops."""
    num_tokens, k = index.shape
    kept = torch.ones(num_tokens, k, dtype=torch.bool)
    if capacity is None:
        return kept
    for e in index.unique().tolist():
        mine = [(t, j) for t in range(num_tokens) for j in range(k) if index[t, j] == e]  # assignment order
        if policy == "probability":
            mine = sorted(mine, key=lambda tj: -probs[tj[0], index[tj]].item())  # stable: ties keep order
        for t, j in mine[capacity:]:
            kept[t, j] = False
    return kept


def reference_experts(x, index, gate, kept, w1, b1, w2, b2, activation):
    """Every expert on every token, masked by the routing. x (T, d) -> (T, d) float32."""
    y = torch.zeros(x.shape[0], w2.shape[2], dtype=torch.float32)
    for e in range(w1.shape[0]):
        h = x @ w1[e] + b1[e]
        out = (F.relu(h) if activation == "relu" else F.gelu(h)) @ w2[e] + b2[e]  # (T, d)
        weight = (gate * ((index == e) & kept)).sum(1)  # (T,)
        y = y + weight.unsqueeze(1) * out.float()
    return y


def weights(E, d, f, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = ((E, d, f), (E, f), (E, f, d), (E, d))
    return [(torch.randn(s, generator=g, dtype=torch.float64) / 3).to(dtype).requires_grad_() for s in shapes]


def grads_of(tensors):
    out = [t.grad.clone() for t in tensors]
    for t in tensors:
        t.grad = None
    return out


CASES = [  # (tokens, experts, k, capacity_factor, policy, activation)
    (40, 4, 1, None, "position", "relu"),
    (40, 4, 2, None, "position", "gelu"),
    (33, 8, 1, None, "position", "relu"),  # some experts get no token
    (40, 4, 1, 0.75, "position", "relu"),
    (40, 4, 2, 0.5, "probability", "gelu"),
    (7, 16, 2, 1.0, "position", "relu"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tokens, experts, k, factor, policy, activation", CASES)
def test_dispatch_paths_equal_reference(backend, tokens, experts, k, factor, policy, activation):
    d, f = 8, 16  # 16-byte aligned rows: grouped_mm accepts them
    torch.manual_seed(tokens + experts + k)
    x = torch.randn(tokens, d, requires_grad=True)
    logits = torch.randn(tokens, experts, requires_grad=True)
    probs = torch.softmax(logits, -1).detach()
    index = probs.topk(k, -1).indices  # (T, k)
    skew = torch.arange(tokens) % 3 == 0  # pile a third of the tokens on expert 0 so capacities bite
    index = torch.where(skew.unsqueeze(1) & (torch.arange(k) == 0), torch.zeros_like(index), index)
    index[:, 1:] = torch.where(index[:, 1:] == index[:, :1], (index[:, :1] + 1) % experts, index[:, 1:])
    params = weights(experts, d, f)
    capacity = expert_capacity(tokens, experts, k, factor)
    priority = probs.gather(1, index) if policy == "probability" and capacity is not None else None
    plan = plan_dispatch(index, experts, capacity, priority)
    kept = reference_kept(index, probs, capacity, policy)
    assert torch.equal(plan.kept, kept)
    assert sum(plan.sizes) == int(kept.sum()) and plan.offsets.dtype == torch.int32
    target = torch.randn(tokens, d)

    out = combine(run_experts(x, plan, *params, activation, 0.0, True, backend=backend), plan,
                  torch.softmax(logits, -1).gather(1, index), tokens)
    (out * target).sum().backward()
    got = grads_of([x, logits, *params])
    ref = reference_experts(x, index, torch.softmax(logits, -1).gather(1, index), kept, *params, activation)
    (ref * target).sum().backward()
    expected = grads_of([x, logits, *params])
    torch.testing.assert_close(out, ref)
    for name, a, b in zip(("x", "logits", "w1", "b1", "w2", "b2"), got, expected):
        torch.testing.assert_close(a, b, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("backend", ["fused", "loop"])
def test_float64_paths_are_exact_to_rounding(backend):
    tokens, experts, d, f = 30, 4, 5, 7  # unaligned sizes, double precision
    x = torch.randn(tokens, d, dtype=torch.float64, requires_grad=True)
    gate = torch.rand(tokens, 1, dtype=torch.float64)
    index = torch.randint(0, experts, (tokens, 1))
    params = weights(experts, d, f, dtype=torch.float64)
    plan = plan_dispatch(index, experts, None)
    out = run_experts(x, plan, *params, "gelu", 0.0, True, backend=backend)
    y = torch.zeros(tokens, d, dtype=torch.float64).index_add(0, plan.token, out * gate[plan.token])
    y.sum().backward()
    got = grads_of([x, *params])
    ref = torch.zeros(tokens, d, dtype=torch.float64)
    for e in range(experts):
        ref = ref + gate * (index == e) * (F.gelu(x @ params[0][e] + params[1][e]) @ params[2][e] + params[3][e])
    ref.sum().backward()
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, grads_of([x, *params])):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_empty_batch_and_unused_experts_get_zero_weight_gradients():
    params = weights(3, 8, 16)
    plan = plan_dispatch(torch.zeros(5, 1, dtype=torch.long), 3, None)  # only expert 0 is used
    x = torch.randn(5, 8, requires_grad=True)
    for backend in BACKENDS:
        run_experts(x, plan, *params, "relu", 0.0, True, backend=backend).sum().backward()
        w1, b1, w2, b2 = grads_of(params)
        assert w1[1:].abs().sum() == 0 and b2[1:].abs().sum() == 0 and w1[0].abs().sum() > 0, backend
    empty = plan_dispatch(torch.zeros(0, 1, dtype=torch.long), 3, None)
    for backend in BACKENDS:
        assert run_experts(torch.randn(0, 8), empty, *params, "relu", 0.0, True, backend=backend).shape == (0, 8)


@pytest.mark.parametrize("estimator, k, options", [
    ("topk", 1, {}), ("sparsemixer", 1, {}), ("sparsemixer_v2", 2, {}), ("straight_through", 1, {}),
    ("default_moe", 1, {}),
])
def test_layer_backends_agree_for_every_estimator_path(estimator, k, options):
    """Whole layer, training: the same routing (same generator seed) and the same values and gradients per backend."""
    results = []
    for backend in BACKENDS:
        torch.manual_seed(0)
        layer = MoEFeedForward(8, 16, MoEConfig(num_experts=4, k=k, estimator=estimator, estimator_options=options,
                                                capacity_factor=1.5, output_scale=True))
        layer.expert_backend = backend
        x = torch.randn(3, 11, 8, requires_grad=True)
        pad = torch.zeros(3, 11, dtype=torch.bool)
        pad[1, 7:] = True
        out = None
        for _ in range(2):  # two steps: Default MoE's EMA vectors enter the second
            out = layer(x, padding_mask=pad, generator=torch.Generator().manual_seed(5))
            ((out.y * torch.linspace(-1, 1, 8)).sum() + out.balance_loss + out.z_loss).backward()
        results.append((out.y.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in layer.named_parameters()}))
    y0, gx0, g0 = results[0]
    for y, gx, g in results[1:]:
        torch.testing.assert_close(y, y0)
        torch.testing.assert_close(gx, gx0)
        assert g.keys() == g0.keys()
        for name in g0:
            torch.testing.assert_close(g[name], g0[name], msg=lambda m, name=name: f"{name}: {m}")


def test_layer_matches_reference_with_dropout_off_in_eval():
    """activation_dropout > 0: training uses grouped_mm/loop; eval (no dropout) the fused path; eval equals the
    reference computed from the layer's own routing."""
    torch.manual_seed(1)
    layer = MoEFeedForward(8, 16, MoEConfig(num_experts=4, estimator="topk", activation_dropout=0.3)).eval()
    x = torch.randn(20, 8)
    probs = torch.softmax(layer.router(x), -1)
    gate, index = probs.max(-1, keepdim=True)
    ref = reference_experts(x, index, gate, torch.ones_like(index, dtype=torch.bool), layer.w1, layer.b1, layer.w2,
                            layer.b2, "relu")
    torch.testing.assert_close(layer(x).y, ref)
    layer.train()
    assert not torch.allclose(layer(x).y, ref)  # dropout active in training
