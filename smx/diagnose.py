"""Gradient fidelity: exact enumerated vs estimated router gradients on a single-MoE-layer problem.

The problem: tokens x (T, d), a router W (E, d) with logits z = x W^T, fixed experts with outputs O (T, E, d_out), and a
per-token loss L_t(y_t). The reference model is the stochastic top-k MoE that the SparseMixer family approximates:
D_1..D_k drawn from softmax(z) without replacement, gate_j = the stage probability q_j = p_{D_j} / (1 - sum_{l<j} p_{D_l}),
y = sum_j q_j O_{D_j}. Its expected loss F(W) = sum_t sum_{sequences} P(seq) L_t(y_seq) is differentiated exactly by
enumerating every ordered choice of k experts per token (float64 autograd).

An estimator's gradient for one sample is dL/dW = sum_t (dL/dz_t) x_t^T, with dL/dz from its own Routing; M samples
are drawn in one batched call. Reported: cosine(mean, exact), relative bias ||mean - exact|| / ||exact||, relative
standard deviation sqrt(E||g_s - mean||^2) / ||exact||, the Monte-Carlo noise floor of the bias (rel. std / sqrt(M)),
and the median time of one forward+backward call on T tokens. `topk` and `straight_through` route with a different
forward (argmax; gate value 1), so their bias also measures that difference: it is what a user trades by choosing them.
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from smx import estimators
from smx.errors import UserError
from smx.estimators.base import Routing, keep_mask, masked_softmax

LOSSES = ("linear", "quadratic", "mlp")


@dataclass(frozen=True)
class Problem:
    x: Tensor  # (T, d)
    weight: Tensor  # (E, d) router weight
    outputs: Tensor  # (T, E, d_out) fixed expert outputs
    target: Tensor  # (T, d_out) linear: coefficients a_t; quadratic/mlp: targets c_t
    head: Tensor  # (d_out, d_out) fixed nonlinear head (mlp loss only)
    loss: str
    k: int
    offset: float = 0.0  # added to every logit: softmax-invariant, but the SparseMixer mask is not shift-invariant


@dataclass(frozen=True)
class Fidelity:
    estimator: str
    cosine: float
    rel_bias: float
    rel_std: float
    noise_floor: float
    ms_per_call: float


def make_problem(experts: int = 4, k: int = 1, tokens: int = 32, loss: str = "quadratic", d: int = 16,
                 d_out: int = 8, logit_scale: float = 2.0, seed: int = 0, offset: float = 0.0) -> Problem:
    if loss not in LOSSES:
        raise UserError(f"--loss must be one of {', '.join(LOSSES)}; got {loss!r}")
    if not 1 <= k <= experts:
        raise UserError(f"--k must be between 1 and --experts={experts}; got {k}")
    if tokens < 1:
        raise UserError(f"--tokens must be >= 1; got {tokens}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, d, generator=g, dtype=torch.float64)
    weight = torch.randn(experts, d, generator=g, dtype=torch.float64) * logit_scale / d**0.5
    outputs = torch.randn(tokens, experts, d_out, generator=g, dtype=torch.float64)
    target = torch.randn(tokens, d_out, generator=g, dtype=torch.float64)
    head = torch.randn(d_out, d_out, generator=g, dtype=torch.float64) / d_out**0.5
    return Problem(x, weight, outputs, target, head, loss, k, offset)


def token_loss(problem: Problem, y: Tensor) -> Tensor:
    """Per-token loss L_t(y_t); y (..., T, d_out) -> (..., T)."""
    if problem.loss == "linear":
        return (problem.target * y).sum(-1)
    if problem.loss == "quadratic":
        return 0.5 * ((y - problem.target) ** 2).sum(-1)
    return 0.5 * ((torch.tanh(y @ problem.head) - problem.target) ** 2).sum(-1)


def exact_gradient(problem: Problem, reference_eps: float | None = None) -> Tensor:
    """d/dW of sum_t E_seq[L_t], enumerating every ordered choice of k distinct experts per token. (E, d) float64.

    reference_eps None: D_j ~ softmax over the experts not chosen yet (stage probability p_D / (1 - sum_prev p)).
    reference_eps = eps: the SparseMixer forward itself, D_j ~ masked softmax with the 2*eps band of stage j
    (the mask is piecewise constant in W, so its derivative is zero almost everywhere).
    """
    eps = float("inf") if reference_eps is None else reference_eps
    weight = problem.weight.clone().requires_grad_(True)
    z = problem.x @ weight.T + problem.offset  # (T, E)
    tokens, num_experts = z.shape
    total = torch.zeros((), dtype=torch.float64)
    for seq in itertools.permutations(range(num_experts), problem.k):
        prob = torch.ones(tokens, dtype=torch.float64)  # (T,)
        chosen = torch.zeros(tokens, num_experts, dtype=torch.bool)
        y = torch.zeros_like(problem.target)  # (T, d_out)
        for stage, expert in enumerate(seq):
            keep = keep_mask(z, eps, excluded=chosen if stage else None)  # (T, E)
            q = masked_softmax(z, keep)[:, expert]  # (T,) stage probability, 0 if masked
            prob = prob * q
            y = y + q[:, None] * problem.outputs[:, expert]
            chosen[:, expert] = True
        total = total + (prob * token_loss(problem, y)).sum()
    (grad,) = torch.autograd.grad(total, weight)
    return grad


def combine(routing: Routing, outputs: Tensor, defaults: Tensor) -> Tensor:
    """The layer's combine on fixed expert outputs: (N, E, d_out) -> (N, d_out)."""
    chosen = outputs.gather(1, routing.expert_index[..., None].expand(-1, -1, outputs.shape[-1]))  # (N, k, d_out)
    y = (routing.gate.to(outputs.dtype)[..., None] * chosen).sum(1)
    if routing.dense_weight is not None:
        y = y + torch.einsum("ne,ned->nd", routing.dense_weight.to(outputs.dtype), outputs)
    if routing.default_weight is not None:
        y = y + routing.default_weight.to(outputs.dtype) @ defaults
    return y


def sample_gradients(problem: Problem, est, samples: int, generator: torch.Generator | None = None) -> Tensor:
    """Per-sample router-weight gradients of one estimator: (samples, E, d) float64."""
    T = problem.x.shape[0]
    logits = (problem.x @ problem.weight.T + problem.offset).float().repeat(samples, 1).requires_grad_(True)
    routing = est(logits, k=problem.k, training=True, generator=generator)
    outputs = problem.outputs.repeat(samples, 1, 1)  # (M*T, E, d_out)
    defaults = problem.outputs.mean(0)  # (E, d_out): the fixed point of Default MoE's EMA on fixed experts
    y = combine(routing, outputs, defaults).view(samples, T, -1)
    loss = token_loss(problem, y).sum()
    (grad_z,) = torch.autograd.grad(loss, logits)
    return torch.einsum("mte,td->med", grad_z.double().view(samples, T, -1), problem.x)


def time_call(problem: Problem, est, repeats: int = 20) -> float:
    """Median milliseconds of one forward+backward estimator call on the problem's T tokens."""
    times = []
    for _ in range(repeats):
        logits = (problem.x @ problem.weight.T + problem.offset).float().requires_grad_(True)
        start = time.perf_counter()
        routing = est(logits, k=problem.k, training=True)
        y = combine(routing, problem.outputs.float(), problem.outputs.float().mean(0))
        y.sum().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def fidelity(problem: Problem, name: str, est, exact: Tensor, samples: int, seed: int = 0) -> Fidelity:
    grads = sample_gradients(problem, est, samples, torch.Generator().manual_seed(seed)).flatten(1)  # (M, E*d)
    mean, ref = grads.mean(0), exact.flatten()
    norm = ref.norm().item()
    rel_std = ((grads - mean) ** 2).sum(1).mean().sqrt().item() / norm
    return Fidelity(
        estimator=name,
        cosine=torch.nn.functional.cosine_similarity(mean, ref, dim=0).item(),
        rel_bias=(mean - ref).norm().item() / norm,
        rel_std=rel_std,
        noise_floor=rel_std / samples**0.5,
        ms_per_call=time_call(problem, est),
    )


def study(experts: int = 4, k: int = 1, tokens: int = 32, samples: int = 4000, loss: str = "quadratic",
          jitter_eps: float | None = None, seed: int = 0, names: list[str] | None = None,
          reference_eps: float | None = None, offset: float = 0.0) -> dict:
    """Every estimator that supports top-k against the exact gradient. Returns a JSON-ready dict.

    jitter_eps, when given, overrides the mask band of the SparseMixer family only (topk's jitter stays off).
    reference_eps: the exact reference is the masked-sampling model with this band (None: plain softmax sampling).
    """
    if samples < 2:
        raise UserError(f"--samples must be >= 2; got {samples}")
    problem = make_problem(experts, k, tokens, loss, seed=seed, offset=offset)
    exact = exact_gradient(problem, reference_eps)
    rows, skipped = [], {}
    for name in names or estimators.names():
        options = {}
        if jitter_eps is not None and estimators.REGISTRY[name].masked_sampling:
            options["jitter_eps"] = jitter_eps
        est = estimators.get(name, **options)
        if est.variable_k:
            skipped[name] = ("its ReLU gates define another model (no softmax routing distribution): there is no "
                             "exact gradient of this objective to compare it with")
            continue
        try:
            est.validate(k, experts)
        except ValueError as e:
            skipped[name] = str(e)
            continue
        rows.append(fidelity(problem, name, est, exact, samples, seed))
    settings = dict(experts=experts, k=k, tokens=tokens, samples=samples, loss=loss, jitter_eps=jitter_eps, seed=seed,
                    reference_eps=reference_eps, logit_offset=offset)
    return {"settings": settings, "rows": [asdict(r) for r in rows], "skipped": skipped}
