"""The sync-free form of the MoE layer (accelerators: static plans, padding as a mask) against the CPU form (padding
removed by index, dropped assignments cut out): same plans, same values, same gradients; and no operation in its
training forward + backward that would make an accelerator's host wait (bench.host_sync, the CPU stand-in for
torch.cuda.set_sync_debug_mode("error"), which the GPU check runs on CUDA)."""

import itertools

import pytest
import torch

from bench.host_sync import HostSyncs
from smx import estimators
from smx.moe import MoEConfig, MoEFeedForward
from smx.moe.dispatch import (expert_capacity, expert_capacity_on_device, expert_counts, plan_dispatch,
                              plan_dispatch_static)
from smx.moe.losses import load_balance_loss, routing_stats, z_loss

ESTIMATOR_K = [(name, 2 if name == "sparsemixer_v2" else 1) for name in estimators.names()]


def test_capacity_on_device_equals_host_capacity():
    for tokens, factor, k, experts in itertools.product(range(0, 300, 7), (1.0, 1.1, 1.25, 2.0, 0.3), (1, 2),
                                                        (4, 8, 10, 64)):
        want = expert_capacity(tokens, experts, k, factor)
        got = expert_capacity_on_device(torch.tensor(tokens), experts, k, factor)
        assert int(got) == want, (tokens, factor, k, experts)


@pytest.mark.parametrize("capacity,policy", [(None, "position"), (3, "position"), (2, "probability"), (1, "position")])
def test_static_plan_holds_the_compact_plan_then_the_rest(capacity, policy):
    torch.manual_seed(0)
    num_tokens, k, experts = 23, 2, 5
    index = torch.stack([torch.randperm(experts)[:k] for _ in range(num_tokens)])  # (T, k) distinct per token
    priority = torch.rand(num_tokens, k) if policy == "probability" else None
    valid = torch.rand(num_tokens) > 0.3
    rows = valid.nonzero().squeeze(1)
    compact = plan_dispatch(index[rows], experts, capacity, None if priority is None else priority[rows])
    static = plan_dispatch_static(index, experts, capacity, priority, valid)
    n = compact.assignment.numel()
    assert static.rows == num_tokens * k and int(static.row_valid.sum()) == n
    assert static.row_valid[:n].all()
    assert torch.equal(static.token[:n], rows[compact.token])  # compact token ids mapped back to positions
    assert torch.equal(static.expert[:n], compact.expert)
    assert torch.equal(static.offsets, compact.offsets) and torch.equal(static.counts, compact.counts)
    assert torch.equal(static.kept[rows], compact.kept) and not static.kept[~valid].any()
    assert torch.equal(static.assignment[static.inverse], torch.arange(num_tokens * k))  # a full permutation
    assert torch.equal(torch.sort(static.assignment).values, torch.arange(num_tokens * k))


def test_masked_losses_equal_the_losses_of_the_valid_tokens():
    torch.manual_seed(1)
    logits = torch.randn(17, 6)
    probs = logits.softmax(1)
    index = logits.topk(2, dim=1).indices
    kept = torch.rand(17, 2) > 0.2
    valid = torch.rand(17) > 0.4
    assert torch.allclose(load_balance_loss(probs, index, valid), load_balance_loss(probs[valid], index[valid]))
    assert torch.allclose(z_loss(logits, valid), z_loss(logits[valid]))
    assert torch.equal(expert_counts(index, 6, valid), expert_counts(index[valid], 6))
    nograd = torch.rand(17) > 0.5
    a = routing_stats(probs, index, kept, logits, nograd, valid)
    b = routing_stats(probs[valid], index[valid], kept[valid], logits[valid], nograd[valid])
    for field in ("load", "dropped", "entropy", "unused", "imbalance", "no_gradient", "logit_rms"):
        assert torch.allclose(getattr(a, field).float(), getattr(b, field).float(), atol=1e-6), field
    none = torch.zeros(17, dtype=torch.bool)
    empty = routing_stats(probs, index, kept, logits, nograd, none)
    assert float(empty.imbalance) == 0 and float(load_balance_loss(probs, index, none)) == 0


def run_layer(layer, x, pad, g):
    for p in layer.parameters():
        p.grad = None
    x = x.detach().clone().requires_grad_(True)
    out = layer(x, pad)
    torch.autograd.backward([out.y, out.aux_loss(0.3, 0.1)], [g, torch.ones(())])
    grads = {name: p.grad.clone() for name, p in layer.named_parameters() if p.grad is not None}
    return out, x.grad.clone(), grads


def twin_layers(estimator, k, **config):
    torch.manual_seed(2)
    a = MoEFeedForward(16, 32, MoEConfig(num_experts=6, k=k, estimator=estimator, **config))
    b = MoEFeedForward(16, 32, MoEConfig(num_experts=6, k=k, estimator=estimator, **config))
    b.load_state_dict(a.state_dict())
    a.sync_free, b.sync_free = False, True
    return a, b


def assert_same(out_a, gx_a, grads_a, out_b, gx_b, grads_b):
    assert torch.allclose(out_a.y, out_b.y, atol=1e-6)
    assert torch.allclose(out_a.balance_loss, out_b.balance_loss, atol=1e-6)
    assert torch.allclose(out_a.z_loss, out_b.z_loss, atol=1e-6)
    for field in ("load", "dropped", "imbalance", "no_gradient", "logit_rms", "entropy"):
        assert torch.allclose(getattr(out_a.stats, field).float(), getattr(out_b.stats, field).float(),
                              atol=1e-6), field
    assert torch.allclose(gx_a, gx_b, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-5), name


@pytest.mark.parametrize("estimator,k", ESTIMATOR_K)
@pytest.mark.parametrize("capacity_factor,drop_policy", [(None, "position"), (1.0, "position"),
                                                         (1.0, "probability")])
@pytest.mark.parametrize("backend", ["fused", "grouped_mm", "loop"])
def test_sync_free_layer_equals_cpu_layer(estimator, k, capacity_factor, drop_policy, backend):
    """Padding + evaluation routing (deterministic for every estimator), and training routing without padding
    (the same noise: both forms draw it for the same rows)."""
    a, b = twin_layers(estimator, k, capacity_factor=capacity_factor, eval_capacity_factor=capacity_factor,
                       drop_policy=drop_policy)
    a.expert_backend = b.expert_backend = backend
    x = torch.randn(4, 7, 16)
    g = torch.randn(4, 7, 16)
    pad = torch.zeros(4, 7, dtype=torch.bool)
    pad[0, :3] = pad[2, 5:] = True
    a.eval(), b.eval()
    assert_same(*run_layer(a, x, pad, g), *run_layer(b, x, pad, g))
    a.train(), b.train()
    torch.manual_seed(5)
    first = run_layer(a, x, None, g)
    torch.manual_seed(5)
    assert_same(*first, *run_layer(b, x, None, g))


@pytest.mark.parametrize("estimator", ["topk", "default_moe", "densemixer"])
def test_sync_free_training_with_padding_and_loss_free_counts(estimator):
    balance = {"balance": "loss_free"} if estimator != "densemixer" else {}
    a, b = twin_layers(estimator, 2, capacity_factor=1.0, shared_experts=1, **balance)
    x, g = torch.randn(3, 9, 16), torch.randn(3, 9, 16)
    pad = torch.zeros(3, 9, dtype=torch.bool)
    pad[1, :4] = True
    a.train(), b.train()
    for update in range(3):  # the default vectors / selection bias evolve the same way
        a.set_num_updates(update), b.set_num_updates(update)
        assert_same(*run_layer(a, x, pad, g), *run_layer(b, x, pad, g))
        if a.selection_bias is not None:
            assert torch.equal(a.pending_counts, b.pending_counts) and int(a.pending_counts.sum()) == 23 * 2
            assert torch.equal(a.selection_bias, b.selection_bias)
    if a.default_vectors is not None:
        assert torch.allclose(a.default_vectors, b.default_vectors, atol=1e-6)
    assert float(run_layer(b, x, pad, g)[0].y[1, :4].detach().abs().sum()) == 0  # padding positions stay 0


@pytest.mark.parametrize("estimator,k", ESTIMATOR_K)
@pytest.mark.parametrize("capacity_factor", [None, 1.25])
def test_sync_free_training_step_never_waits_for_the_host(estimator, k, capacity_factor):
    torch.manual_seed(3)
    layer = MoEFeedForward(16, 32, MoEConfig(num_experts=4, k=k, estimator=estimator,
                                             capacity_factor=capacity_factor))
    layer.sync_free, layer.expert_backend = True, "grouped_mm"
    layer.train()
    x = torch.randn(3, 5, 16, requires_grad=True)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[0, :2] = True
    with HostSyncs() as syncs:
        out = layer(x, pad)
        torch.autograd.backward([out.y, out.aux_loss(0.01)], [torch.randn_like(out.y), torch.ones(())])
    assert syncs.found == []


def test_host_sync_detector_sees_the_cpu_form():
    layer = MoEFeedForward(16, 32, MoEConfig(num_experts=4, k=1, estimator="topk", capacity_factor=1.0))
    pad = torch.zeros(2, 3, dtype=torch.bool)
    pad[0, 0] = True
    with HostSyncs() as syncs:
        layer(torch.randn(2, 3, 16), pad).y.sum().backward()
    seen = syncs.summary()
    assert "nonzero (torch function)" in seen and "aten.nonzero.default" in seen  # the padding removal
    assert "boolean-mask indexing (torch function)" in seen  # the capacity cut
    assert "tolist (torch function)" in seen  # the fused backend's slice sizes
