"""Every estimator under protocol `reference` against an independent re-implementation of its reference code.

For each arm, the MoE layer is built from smx.recipe.protocol's reference settings (router bias, omega, options, balance
inputs) and compared with a re-implementation written here from the reference's math, fed the same random draws
(the same torch.Generator seed, drawn in the same order): forward output, router / omega / expert gradients, the
balance loss and its gradient, to 1e-6. The problem has negative logits and exact ties (experts 1 and 2 share their
router row), and is checked to be non-trivial (masks that keep several experts, both scale values drawn).

References (read from their code, re-implemented, never copied):
- Switch / SwitchGate and SparseMixer v1: microsoft/SparseMixer sparsemixer/{switchgate,sparsemixer}.py and the
  fairseq example (nn.Linear router with bias, omega on the v1 output, balance from the masked softmax for v1);
- GRIN: transformers' phimoe sparsemixer() + PhimoeMultiplier (two masked-sampling stages, third-order scale);
- straight-through: ReinMax's ST (D ~ softmax(z), surrogate softmax(z / tau)); Gumbel-ST as torch's gumbel_softmax;
- Default MoE: the paper's eq. 11 (EMA default vectors, updated before use, frozen at eval);
- DenseMixer: yaof20/DenseMixer olmoe_custom.py (dense router gradient, routed-only expert gradient).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from smx import estimators
from smx.moe import MoEConfig, MoEFeedForward
from smx.recipe.protocol import reference_for

T, D, DFF, E = 24, 6, 10, 4


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    """|a - b| <= 1e-6 relative to the tensor's scale (max(1, max |b|)): float32 rounding, nothing more."""
    scale = max(1.0, b.detach().abs().max().item())
    err = (a.detach() - b.detach()).abs().max().item()
    assert err <= 1e-6 * scale, f"max |smx - reference| = {err:.3g} (scale {scale:.3g})"


# ----------------------------------------------------------------------------------------- the shared problem
def problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, D, generator=g)
    params = {
        "w_r": torch.randn(E, D, generator=g) * 0.1,
        "b_r": torch.tensor([1.0, 0.9, 0.9, -0.3]),  # experts 1 and 2 tie exactly (same row and bias)
        "w1": torch.randn(E, D, DFF, generator=g) * 0.4, "b1": torch.randn(E, DFF, generator=g) * 0.1,
        "w2": torch.randn(E, DFF, D, generator=g) * 0.4, "b2": torch.randn(E, D, generator=g) * 0.1,
        "omega": 1 + 0.1 * torch.randn(D, generator=g),
    }
    params["w_r"][2] = params["w_r"][1]
    upstream = torch.randn(T, D, generator=g)  # L = sum(y * upstream)
    return x, params, upstream


def smx_layer(name: str, k: int, params: dict) -> MoEFeedForward:
    ref = reference_for(name, k)
    cfg = MoEConfig(num_experts=E, k=k, estimator=name, estimator_options=dict(ref.options),
                    router_bias=ref.router_bias, output_scale=ref.output_scale, balance_source=ref.balance_source,
                    input_jitter=ref.input_jitter)
    layer = MoEFeedForward(D, DFF, cfg)
    with torch.no_grad():
        layer.router.proj.weight.copy_(params["w_r"])
        if ref.router_bias:
            layer.router.proj.bias.copy_(params["b_r"])
        for key in ("w1", "b1", "w2", "b2"):
            getattr(layer, key).copy_(params[key])
        if ref.output_scale:
            layer.omega.copy_(params["omega"])
    return layer


def leaf_params(name: str, k: int, params: dict) -> dict:
    ref = reference_for(name, k)
    out = {"w_r": params["w_r"].clone().requires_grad_()}
    out["b_r"] = params["b_r"].clone().requires_grad_() if ref.router_bias else torch.zeros(E)
    for key in ("w1", "b1", "w2", "b2"):
        out[key] = params[key].clone().requires_grad_()
    out["omega"] = params["omega"].clone().requires_grad_() if ref.output_scale else None
    return out


def expert(p: dict, e: int, x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x @ p["w1"][e] + p["b1"][e]) @ p["w2"][e] + p["b2"][e]


def all_experts(p: dict, x: torch.Tensor) -> torch.Tensor:
    return torch.stack([expert(p, e, x) for e in range(E)], dim=1)  # (T, E, d)


def switch_balance(probs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """E * sum_e f_e P_e, f = assignment fractions of `index` (T, k), P = mean of `probs` (T, E)."""
    counts = F.one_hot(index, E).sum(dim=(0, 1)).float()
    return E * torch.sum(probs.mean(0) * counts / index.numel())


def gumbel_noise(shape, gen) -> torch.Tensor:
    return -torch.empty(shape).exponential_(generator=gen).log()


def band_mask(scores: torch.Tensor, eps: float, excluded: torch.Tensor | None = None) -> torch.Tensor:
    """The references' mask: True = masked out, (max - z) / max(|z|, max) > 2 eps (max over the not excluded)."""
    s = scores.detach()
    masked_scores = s if excluded is None else s.masked_fill(excluded, float("-inf"))
    threshold = masked_scores.max(dim=-1, keepdim=True).values
    factor = s.abs().clamp(min=threshold)
    out = ((threshold - s) / factor) > (2 * eps)
    return out if excluded is None else out | excluded


# ------------------------------------------------------------------------------------ reference re-implementations
class DoubleBackward(torch.autograd.Function):
    """SparseMixer v1's core: forward multiplier * scale, backward grad * 2 (the scale is ignored)."""

    @staticmethod
    def forward(ctx, multiplier, scale):
        return multiplier * scale

    @staticmethod
    def backward(ctx, grad):
        return grad * 2, None


class GrinMultiplier(torch.autograd.Function):
    """GRIN's PhimoeMultiplier: forward p_D * scale; backward to the RAW scores: g p_D (e_D - p_masked)."""

    @staticmethod
    def forward(ctx, scores, multiplier, selected, masked_gates, scale):
        ctx.save_for_backward(multiplier, selected, masked_gates)
        return multiplier * scale

    @staticmethod
    def backward(ctx, grad):
        multiplier, selected, masked_gates = ctx.saved_tensors
        grad = grad * multiplier
        out = masked_gates * grad.mul(-1)
        out.scatter_add_(-1, selected, grad)
        return out, None, None, None, None


def ref_v1(name, x, p, gen, training, jitter_eps=0.1):
    eps = jitter_eps
    logits = x @ p["w_r"].T + p["b_r"]
    max_ind = logits.detach().max(dim=-1, keepdim=True).indices
    logits = logits.masked_fill(band_mask(logits, eps), float("-inf"))
    probs = logits.softmax(dim=-1)
    if training:
        sample = (logits.detach() + gumbel_noise(logits.shape, gen)).max(dim=-1).indices.unsqueeze(-1)
        multiplier = probs.gather(1, sample)
        if name == "sparsemixer_1st":
            scale = torch.ones_like(multiplier)
        elif name == "sparsemixer":
            scale = torch.where((sample == max_ind) | (torch.rand(multiplier.shape, generator=gen) > 0.5), 1.0, 0.5)
        else:  # sparsemixer_inf
            first = (sample == max_ind) | (torch.rand(multiplier.shape, generator=gen) > 0.5)
            scale = torch.where(first, 1.0, torch.rand(multiplier.shape, generator=gen))
        multiplier = DoubleBackward.apply(multiplier, scale)
    else:
        sample = max_ind
        multiplier = probs.gather(1, sample)
    y = all_experts(p, x)[torch.arange(T), sample[:, 0]] * multiplier * p["omega"]
    return y, switch_balance(probs, sample)


def ref_grin(x, p, gen, training, k=2, jitter_eps=0.01):
    eps = jitter_eps
    scores = x @ p["w_r"].T + p["b_r"]
    chosen = torch.zeros(T, E, dtype=torch.bool)
    multipliers, selected_all = [], []
    for stage in range(k):
        base = scores if stage == 0 else scores.masked_fill(chosen, float("-inf"))
        masked = base.masked_fill(band_mask(scores, eps, chosen if stage else None), float("-inf"))
        max_ind = masked.detach().max(dim=-1, keepdim=True).indices
        selected = (masked.detach() + gumbel_noise(masked.shape, gen)).max(dim=-1).indices.unsqueeze(-1) \
            if training else max_ind
        gates = torch.softmax(masked, dim=-1)
        multiplier = gates.gather(-1, selected)
        if training:
            first = (selected == max_ind) | (torch.rand(multiplier.shape, generator=gen) > 0.75)
            scale = torch.where(first, 1.0, 1.0 / 3.0)  # the reference writes 0.3333 + 0.6667 * mask
            multiplier = GrinMultiplier.apply(scores, multiplier.detach(), selected, gates.detach(), scale)
        multipliers.append(multiplier)
        selected_all.append(selected)
        chosen = chosen | F.one_hot(selected[:, 0], E).bool()
    gate, index = torch.cat(multipliers, 1), torch.cat(selected_all, 1)
    outs = all_experts(p, x)
    y = sum(gate[:, j:j + 1] * outs[torch.arange(T), index[:, j]] for j in range(k))
    probs = scores.softmax(-1)
    return y, switch_balance(probs, probs.detach().topk(k, dim=-1).indices)  # f from the deterministic top-k


def ref_switch(x, p, gen, training, k=1, jitter_eps=0.1, normalize=False):
    eps = jitter_eps
    logits = x @ p["w_r"].T + p["b_r"]
    if training and eps > 0:
        logits = logits * (torch.rand(logits.shape, generator=gen) * 2 * eps + 1.0 - eps)
    probs = logits.softmax(-1)
    gate, index = probs.topk(k, dim=-1)
    if normalize:
        gate = gate / gate.sum(-1, keepdim=True)
    outs = all_experts(p, x)
    y = sum(gate[:, j:j + 1] * outs[torch.arange(T), index[:, j]] for j in range(k))
    return y, switch_balance(probs, index)


def ref_straight_through(x, p, gen, training, tau=1.0, gumbel=False):
    logits = x @ p["w_r"].T + p["b_r"]
    probs = logits.softmax(-1)
    if training:
        g = gumbel_noise(logits.shape, gen)
        index = (logits.detach() + g).argmax(-1)  # D ~ softmax(z)
        soft = torch.softmax((logits + g) / tau, -1) if gumbel else torch.softmax(logits / tau, -1)
        hard = F.one_hot(index, E).float()
        weights = hard - soft.detach() + soft  # ReinMax's ST / gumbel_softmax(hard=True)
    else:
        index = logits.argmax(-1)
        weights = F.one_hot(index, E).float()
    y = torch.einsum("te,ted->td", weights, all_experts(p, x))
    return y, switch_balance(probs, index.unsqueeze(1))


def ref_densemixer(x, p, k=1, training=True, normalize=False):
    logits = x @ p["w_r"].T + p["b_r"]
    weights = logits.softmax(-1)
    weights_topk, selected = weights.topk(k, dim=-1)
    if normalize:
        ratio = weights_topk.sum(-1, keepdim=True)
        weights_topk = weights_topk / ratio
        mask = F.one_hot(selected, E).sum(1).float()
        weights = weights * (1.0 - mask) / ratio.detach() + weights * mask / ratio
    dense = torch.zeros(T, D)
    sparse = torch.zeros(T, D)
    for e in range(E):
        out = expert(p, e, x)
        active = (selected == e).any(dim=1).float().unsqueeze(-1)
        if out.requires_grad:
            out.register_hook(lambda grad, m=active: grad * m)  # experts learn from their routed tokens only
        dense = dense + out * weights[:, e:e + 1]
        for j in range(k):
            sparse = sparse + (selected[:, j:j + 1] == e).float() * weights_topk[:, j:j + 1] * out
    y = sparse.detach() + (dense - dense.detach()) if training else sparse
    return y, switch_balance(logits.softmax(-1), selected)


class RefDefaultMoE:
    """Eq. 11: y = sum_{i in top-k} p_i E_i(x) + sum_{i not in top-k} p_i d_i; d_i an EMA (beta) of expert i's mean
    output over its routed tokens, updated before use in training, frozen at eval."""

    def __init__(self, beta: float = 0.9):
        self.beta, self.d, self.seen = beta, torch.zeros(E, D), torch.zeros(E, dtype=torch.bool)

    def __call__(self, x, p, training, k=1):
        logits = x @ p["w_r"].T + p["b_r"]
        probs = logits.softmax(-1)
        gate, index = probs.topk(k, dim=-1)
        outs = all_experts(p, x)
        if training:
            with torch.no_grad():
                for e in range(E):
                    rows = (index == e).any(dim=1)
                    if rows.any():
                        mean = outs[rows, e].mean(0)
                        self.d[e] = self.beta * self.d[e] + (1 - self.beta) * mean if self.seen[e] else mean
                        self.seen[e] = True
        chosen = F.one_hot(index, E).sum(1).bool()
        y = sum(gate[:, j:j + 1] * outs[torch.arange(T), index[:, j]] for j in range(k))
        y = y + probs.masked_fill(chosen, 0.0) @ self.d
        return y, switch_balance(probs, index)


# ------------------------------------------------------------------------------------------------------ comparing
ARMS = [("topk", 1), ("topk", 2), ("sparsemixer", 1), ("sparsemixer_1st", 1), ("sparsemixer_inf", 1),
        ("sparsemixer_v2", 2), ("straight_through", 1), ("default_moe", 1), ("densemixer", 1), ("densemixer", 2)]


def reference_call(name, k, x, p, gen, training, state=None):
    ref = reference_for(name, k)
    if name == "topk":
        return ref_switch(x, p, gen, training, k=k, **ref.options)
    if name in ("sparsemixer", "sparsemixer_1st", "sparsemixer_inf"):
        return ref_v1(name, x, p, gen, training, **ref.options)
    if name == "sparsemixer_v2":
        return ref_grin(x, p, gen, training, k=k, **ref.options)
    if name == "straight_through":
        return ref_straight_through(x, p, gen, training, tau=ref.options["tau"], gumbel=ref.options["gumbel"])
    if name == "densemixer":
        return ref_densemixer(x, p, k=k, training=training, **ref.options)
    return state(x, p, training, k=k)  # default_moe


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, retain_graph=True, allow_unused=True)


@pytest.mark.parametrize("name,k", ARMS)
@pytest.mark.parametrize("training", [True, False])
def test_reference_arm_matches_an_independent_reimplementation(name, k, training):
    x, params, upstream = problem()
    layer = smx_layer(name, k, params).train(training)
    ref_p = leaf_params(name, k, params)
    state = RefDefaultMoE(reference_for(name, k).options.get("beta", 0.9)) if name == "default_moe" else None
    for step in range(2):  # two steps: Default MoE's vectors must also evolve identically
        seed = 100 + step
        out = layer(x, generator=torch.Generator().manual_seed(seed))
        y_ref, balance_ref = reference_call(name, k, x, ref_p, torch.Generator().manual_seed(seed), training, state)
        close(out.y, y_ref)
        close(out.balance_loss, balance_ref)

    smx_router = [layer.router.proj.weight] + ([layer.router.proj.bias] if layer.router.proj.bias is not None else [])
    ref_router = [ref_p["w_r"]] + ([ref_p["b_r"]] if ref_p["b_r"].requires_grad else [])
    smx_rest = [layer.w1, layer.b2] + ([layer.omega] if layer.omega is not None else [])
    ref_rest = [ref_p["w1"], ref_p["b2"]] + ([ref_p["omega"]] if ref_p["omega"] is not None else [])
    task_smx, task_ref = (out.y * upstream).sum(), (y_ref * upstream).sum()
    for a, b in zip(grads(task_smx, smx_router + smx_rest), grads(task_ref, ref_router + ref_rest)):
        assert (a is None) == (b is None)
        if a is not None:
            close(a, b)
    for a, b in zip(grads(out.balance_loss, smx_router), grads(balance_ref, ref_router)):
        close(a, b)


def test_the_problem_is_not_trivial():
    """Negative logits, exact ties, masks keeping several experts, both v1 scales drawn: the comparison can fail."""
    x, params, _ = problem()
    logits = x @ params["w_r"].T + params["b_r"]
    assert (logits < 0).any() and torch.equal(logits[:, 1], logits[:, 2])
    kept = (~band_mask(logits, 0.1)).sum(-1)
    assert (kept >= 2).sum() >= 4 and (kept == 1).any()
    kept_v2 = (~band_mask(logits, 0.01)).sum(-1)
    assert (kept_v2 >= 2).any()  # the tie keeps two experts even at GRIN's eps
    layer = smx_layer("sparsemixer", 1, params)
    gates = layer(x, generator=torch.Generator().manual_seed(100)).y  # scales 1/2 and 1 both appear
    routing = layer.estimator(layer.router(x), k=1, training=True, generator=torch.Generator().manual_seed(100))
    probs = torch.softmax(logits.masked_fill(band_mask(logits, 0.1), float("-inf")), -1)
    scale = routing.gate[:, 0] / probs.gather(1, routing.expert_index)[:, 0]
    assert torch.isclose(scale, torch.tensor(0.5)).any() and torch.isclose(scale, torch.tensor(1.0)).any()
    assert gates.abs().sum() > 0


def test_every_registered_estimator_has_a_reference():
    for name in estimators.names():
        for k in ((1,) if estimators.REGISTRY[name].max_k == 1 else (1, 2)):
            ref = reference_for(name, k)
            assert ref.source
            estimators.get(name, **ref.options).validate(k, E)  # the reference options are valid ones
