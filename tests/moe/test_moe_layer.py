"""MoEFeedForward values: dense equivalence, dropless vs capacity, drops, jitter, losses, padding, scale, dtypes."""

import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.nn.functional as F

from smx.estimators.base import Estimator, Routing
from smx.moe import MoEConfig, MoEFeedForward, MoEOutput, RoutingStats


@dataclass(frozen=True)
class FixedRoute(Estimator):
    """Test estimator: token t goes to experts index[t] with gate 1 whatever the logits (probs = softmax)."""

    index: tuple = ()
    name: ClassVar[str] = "fixed"

    def __call__(self, logits, k=1, training=True, generator=None):
        index = torch.tensor(self.index, dtype=torch.long).reshape(-1, k)
        return Routing(index, torch.ones(index.shape), torch.softmax(logits, -1))


def ffn(x, layer, e):
    """Expert e of `layer` applied by hand. x (n, d) -> (n, d)."""
    h = x @ layer.w1[e] + layer.b1[e]
    h = F.relu(h) if layer.config.activation == "relu" else F.gelu(h)
    return h @ layer.w2[e] + layer.b2[e]


def make(d=4, f=6, seed=0, estimator=None, **cfg):
    torch.manual_seed(seed)
    cfg.setdefault("estimator", "topk")
    return MoEFeedForward(d, f, MoEConfig(**cfg), estimator=estimator)


def set_router(layer, weight):
    with torch.no_grad():
        layer.router.proj.weight.copy_(torch.tensor(weight, dtype=torch.float32))


def clone(layer):
    twin = MoEFeedForward(layer.d_model, layer.d_ff, layer.config, estimator=layer.estimator)
    twin.load_state_dict(layer.state_dict())
    return twin


def grads(layer):
    return {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}


def test_public_api_types():
    layer = make(num_experts=2)
    out = layer(torch.randn(3, 4))
    assert isinstance(out, MoEOutput) and isinstance(out.stats, RoutingStats)
    assert out.y.shape == (3, 4) and out.balance_loss.shape == () and out.z_loss.shape == ()
    assert layer.w1.shape == (2, 4, 6) and layer.b1.shape == (2, 6)
    assert layer.w2.shape == (2, 6, 4) and layer.b2.shape == (2, 4)
    assert layer.router.proj.weight.dtype == torch.float32 and layer.router.proj.bias is None
    assert make(num_experts=2, router_bias=True).router.proj.bias is not None


def test_one_expert_equals_dense_ffn_forward_and_grads():
    layer = make(d=5, f=7, num_experts=1, k=1, activation="gelu")
    dense = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.GELU(), torch.nn.Linear(7, 5))
    with torch.no_grad():
        dense[0].weight.copy_(layer.w1[0].T)
        dense[0].bias.copy_(layer.b1[0])
        dense[2].weight.copy_(layer.w2[0].T)
        dense[2].bias.copy_(layer.b2[0])
    x = torch.randn(2, 3, 5)
    target = torch.randn(2, 3, 5)
    out = layer(x)
    ref = dense(x)
    torch.testing.assert_close(out.y, ref)
    (out.y * target).sum().backward()
    (ref * target).sum().backward()
    torch.testing.assert_close(layer.w1.grad[0], dense[0].weight.grad.T)
    torch.testing.assert_close(layer.b1.grad[0], dense[0].bias.grad)
    torch.testing.assert_close(layer.w2.grad[0], dense[2].weight.grad.T)
    torch.testing.assert_close(layer.b2.grad[0], dense[2].bias.grad)
    assert out.balance_loss.item() == pytest.approx(1.0) and out.stats.dropped.item() == 0


@pytest.mark.parametrize("policy", ["position", "probability"])
def test_dropless_equals_capacity_too_large_to_drop(policy):
    dropless = make(num_experts=4, k=2, drop_policy=policy)
    capped = MoEFeedForward(4, 6, MoEConfig(num_experts=4, k=2, estimator="topk", capacity_factor=2.0,
                                            drop_policy=policy))  # C = ceil(2 * 2 * T / 4) = T
    capped.load_state_dict(dropless.state_dict())
    x = torch.randn(9, 4)
    target = torch.randn(9, 4)
    outs = []
    for layer in (dropless, capped):
        out = layer(x)
        ((out.y * target).sum() + out.balance_loss + out.z_loss).backward()
        outs.append(out)
    torch.testing.assert_close(outs[0].y, outs[1].y)
    assert outs[1].stats.dropped.item() == 0
    g0, g1 = grads(dropless), grads(capped)
    assert g0.keys() == g1.keys() and "router.proj.weight" in g0
    for name in g0:
        torch.testing.assert_close(g0[name], g1[name])


# Router = 10 * the first two input features: tokens 0, 1, 2, 4 go to expert 0, tokens 3, 5 to expert 1.
ROUTE_X = torch.tensor([[0.1, 0.0, 1.0], [0.2, 0.0, -1.0], [0.5, 0.0, 0.5], [0.0, 0.3, 1.0], [0.3, 0.0, 2.0],
                        [0.0, 0.1, -0.5]])


@pytest.mark.parametrize("policy, dropped_tokens", [("position", {2, 4}), ("probability", {0, 1})])
def test_capacity_drops_the_expected_tokens(policy, dropped_tokens):
    layer = make(d=3, num_experts=2, k=1, capacity_factor=2 / 3, drop_policy=policy)  # C = ceil(2/3 * 6 / 2) = 2
    set_router(layer, [[10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
    out = layer(ROUTE_X)
    probs = torch.softmax(ROUTE_X[:, :2] * 10, -1)
    assert out.stats.dropped.item() == pytest.approx(2 / 6)
    torch.testing.assert_close(out.stats.load, torch.tensor([4 / 6, 2 / 6]))  # routed, before the drop
    for t in range(6):
        if t in dropped_tokens:
            assert torch.equal(out.y[t], torch.zeros(3)), t
        else:
            e = 0 if t in (0, 1, 2, 4) else 1
            # the gate p_D multiplies the expert OUTPUT
            torch.testing.assert_close(out.y[t], probs[t, e] * ffn(ROUTE_X[t:t + 1], layer, e)[0])


def test_eval_capacity_is_its_own_setting():
    layer = make(d=3, num_experts=2, k=1, capacity_factor=2 / 3)
    set_router(layer, [[10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
    assert layer(ROUTE_X).stats.dropped.item() > 0
    layer.eval()
    assert layer(ROUTE_X).stats.dropped.item() == 0  # eval_capacity_factor None: dropless
    layer = make(d=3, num_experts=2, k=1, eval_capacity_factor=2 / 3).eval()
    set_router(layer, [[10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
    assert layer(ROUTE_X).stats.dropped.item() == pytest.approx(2 / 6)


def test_input_jitter_touches_only_the_router():
    route = FixedRoute(index=(0, 1, 1, 0, 2))
    plain = make(d=4, num_experts=3, estimator=route)
    jittered = MoEFeedForward(4, 6, MoEConfig(num_experts=3, estimator="topk", input_jitter=0.5), estimator=route)
    jittered.load_state_dict(plain.state_dict())
    x = torch.randn(5, 4)
    expected = plain(x)
    out = jittered(x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out.y, expected.y)  # same routing and gates: experts saw the same inputs
    assert out.z_loss.item() != pytest.approx(expected.z_loss.item())  # but the router input was jittered
    again = jittered(x, generator=torch.Generator().manual_seed(1))
    assert out.z_loss.item() == again.z_loss.item()  # drawn from the generator
    jittered.eval()
    assert jittered(x).z_loss.item() == pytest.approx(expected.z_loss.item())  # no jitter in eval


def test_router_jitter_is_multiplicative_uniform():
    layer = make(d=4, num_experts=2, input_jitter=0.1)
    x = torch.randn(50, 4)
    logits = layer.router(x, torch.Generator().manual_seed(0))
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(logits, (x * (0.9 + 0.2 * noise)) @ layer.router.proj.weight.T)


def test_layer_losses_and_stats_hand_values():
    layer = make(d=3, num_experts=2, k=1)
    set_router(layer, [[10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])
    out = layer(ROUTE_X)
    logits = ROUTE_X[:, :2] * 10
    p = torch.softmax(logits, -1)
    f = torch.tensor([4 / 6, 2 / 6])
    assert out.balance_loss.item() == pytest.approx(2 * (f * p.mean(0)).sum().item(), rel=1e-6)
    lse = [math.log(sum(math.exp(v) for v in row)) for row in logits.tolist()]
    assert out.z_loss.item() == pytest.approx(sum(v * v for v in lse) / 6, rel=1e-6)
    ent = -sum(q * math.log(q) for row in p.tolist() for q in row) / 6
    assert out.stats.entropy.item() == pytest.approx(ent, rel=1e-5)
    assert out.stats.unused.item() == 0 and out.stats.dropped.item() == 0
    layer3 = make(d=3, num_experts=3, k=1)
    set_router(layer3, [[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [-10.0, -10.0, 0.0]])
    assert layer3(ROUTE_X).stats.unused.item() == 1


def test_padding_is_not_routed_and_excluded_from_losses():
    layer = make(d=4, num_experts=3, k=2, capacity_factor=1.0)
    x = torch.randn(2, 5, 4, requires_grad=True)
    pad = torch.tensor([[False, False, False, True, True], [False, True, False, False, True]])
    out = layer(x, padding_mask=pad)
    assert torch.equal(out.y[pad], torch.zeros(int(pad.sum()), 4))
    ref = layer(x[~pad])  # the non-pad tokens alone (same capacity base: 6 tokens)
    torch.testing.assert_close(out.y[~pad], ref.y)
    torch.testing.assert_close(out.balance_loss, ref.balance_loss)
    torch.testing.assert_close(out.z_loss, ref.z_loss)
    for name in ("load", "dropped", "entropy", "unused"):
        torch.testing.assert_close(getattr(out.stats, name), getattr(ref.stats, name))
    (out.y.sum() + out.balance_loss + out.z_loss).backward()
    assert torch.equal(x.grad[pad], torch.zeros(int(pad.sum()), 4))
    all_pad = layer(x, padding_mask=torch.ones(2, 5, dtype=torch.bool))
    assert torch.equal(all_pad.y, torch.zeros(2, 5, 4)) and all_pad.balance_loss.item() == 0
    with pytest.raises(ValueError, match="padding_mask"):
        layer(x, padding_mask=pad.T)


@pytest.mark.parametrize("training", [True, False])
def test_output_scale_multiplies_the_output(training):
    plain = make(num_experts=3, k=2)
    scaled = MoEFeedForward(4, 6, MoEConfig(num_experts=3, k=2, estimator="topk", output_scale=True))
    scaled.load_state_dict(plain.state_dict(), strict=False)
    assert torch.equal(scaled.omega.detach(), torch.ones(4))
    with torch.no_grad():
        scaled.omega.copy_(torch.tensor([0.5, -2.0, 3.0, 0.0]))
    plain.train(training)
    scaled.train(training)
    x = torch.randn(7, 4)
    out = scaled(x)
    torch.testing.assert_close(out.y, plain(x).y * torch.tensor([0.5, -2.0, 3.0, 0.0]))
    out.y.sum().backward()
    torch.testing.assert_close(scaled.omega.grad, plain(x).y.detach().sum(0))


def _router_dtype(layer, x):
    seen = []
    hook = layer.router.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    out = layer(x)
    hook.remove()
    return out, seen[0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_model_dtype_routes_in_float32(dtype):
    layer = make(num_experts=3, k=2, capacity_factor=1.0).to(dtype)
    x = torch.randn(2, 5, 4, dtype=dtype, requires_grad=True)
    out, router_dtype = _router_dtype(layer, x)
    assert out.y.dtype == dtype and router_dtype == torch.float32
    assert out.balance_loss.dtype == torch.float32 and out.z_loss.dtype == torch.float32
    (out.y.float().sum() + out.balance_loss).backward()
    assert layer.router.proj.weight.grad is not None and x.grad.dtype == dtype


def test_float32_model_under_bf16_autocast_routes_in_float32():
    layer = make(num_experts=3, k=2)
    x = torch.randn(6, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, router_dtype = _router_dtype(layer, x)
    assert router_dtype == torch.float32 and out.y.dtype == torch.float32
    x16 = x.to(torch.bfloat16)
    out16, router_dtype = _router_dtype(layer, x16)  # bf16 input into a float32 layer
    assert out16.y.dtype == torch.bfloat16 and router_dtype == torch.float32
