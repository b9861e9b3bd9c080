"""Index-based dispatch and combine (DESIGN.md section 5): no one-hot tokens x experts x capacity tensor.

The (tokens, k) routing assignments are flattened to tokens*k assignments (assignment a = t * k + j is token t's j-th
choice), stably sorted by expert so that each expert owns a contiguous slice, cut to the expert's capacity, run
through that expert, and scatter-added back to their tokens weighted by the gate. Dropped assignments contribute 0
(the residual connection outside the layer carries the token).

The experts run as one grouped computation over the sorted slices (run_experts picks a backend):
- "fused" (CPU): one autograd.Function that loops over the experts with addmm/mm writing into preallocated buffers
  (no tokens x d_ff temporaries beyond the one activation buffer a dense FFN also keeps, weight gradients written in
  place); the slice lengths are host ints, which costs nothing on the CPU;
- "grouped_mm" (accelerators): torch's grouped GEMM with the slice offsets kept on the device (no host
  synchronisation in the dropless path), biases gathered per row. torch (2.11) documents it for bfloat16 on CUDA;
  other dtypes take its fallback, a loop over the groups that reads the offsets on the host (one synchronisation per
  grouped GEMM; bench gpu-check reports the fp16 step's syncs), so the sync-free precision there is bf16
  (recipe train.bf16);
- "loop": plain autograd per expert (any dtype, activation dropout on the CPU; the readable reference).
All three give the same values and gradients (tests/moe/test_moe_perf_equivalence.py).
Static plans (plan_dispatch_static: accelerators) hold all tokens * k assignments, kept ones first, so that no shape
depends on the routing and nothing synchronises with the host, with a capacity and with padding too.
Dropless and static plans also carry the inverse permutation, so that moving rows between token order and expert order is a
gather in both directions (forward and backward): no zero fill + scatter-add, deterministic on accelerators.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

BACKENDS = ("auto", "fused", "grouped_mm", "loop")
GROUPED_MM_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def expert_counts(expert_index: Tensor, num_experts: int, valid: Tensor | None = None,
                  active: Tensor | None = None) -> Tensor:
    """Assignments per expert, (tokens, k) int64 -> (E,) int64; valid (tokens,) bool: count those tokens only;
    active (tokens, k) bool: count those assignments only (variable-count routing).
    scatter_add, not bincount: bincount synchronises with the host on accelerators."""
    flat = expert_index.reshape(-1)
    routed = routed_mask(valid, active, flat.numel())
    if routed is None:
        return torch.zeros(num_experts, dtype=torch.int64, device=flat.device).scatter_add(
            0, flat, torch.ones_like(flat))
    flat = torch.where(routed, flat, num_experts)
    counts = torch.zeros(num_experts + 1, dtype=torch.int64, device=flat.device)  # last bin: not routed
    return counts.scatter_add(0, flat, torch.ones_like(flat))[:num_experts]


def routed_assignments(valid: Tensor, k: int) -> Tensor:
    """(tokens,) bool -> (tokens * k,) bool: assignment t * k + j is routed iff token t is."""
    return valid.unsqueeze(1).expand(-1, k).reshape(-1)


def routed_mask(valid: Tensor | None, active: Tensor | None, n: int) -> Tensor | None:
    """(n,) bool of the n = tokens * k assignments that are routed: of a valid token (valid (tokens,)) and active
    (active (tokens, k)); None when both are None (every assignment)."""
    routed = None if valid is None else routed_assignments(valid, n // max(valid.numel(), 1))
    if active is not None:
        routed = active.reshape(-1) if routed is None else routed & active.reshape(-1)
    return routed


def expert_capacity(num_tokens: int, num_experts: int, k: int, capacity_factor: float | None) -> int | None:
    """Per-expert capacity C = ceil(capacity_factor * k * num_tokens / num_experts); None = dropless.

    Rounding: the product is first rounded to 9 decimals so that float noise (1.1 * 10 = 11.000000000000002) does
    not add a slot, then rounded UP. C >= 1 whenever num_tokens >= 1 (capacity_factor > 0). num_tokens counts the
    routed (non-padding) tokens only.
    """
    if capacity_factor is None:
        return None
    return math.ceil(round(capacity_factor * k * num_tokens / num_experts, 9))


def expert_capacity_on_device(num_tokens: Tensor, num_experts: int, k: int, capacity_factor: float) -> Tensor:
    """expert_capacity for a token count held on the device (() int64): the same value, no host synchronisation.
    The rounding to 9 decimals is done in float64 as round-half-even on the scaled value."""
    scaled = num_tokens.double() * (capacity_factor * k) / num_experts  # the same float64 product as the host's
    return torch.ceil(torch.round(scaled * 1e9) / 1e9).long()


@dataclass(frozen=True)
class DispatchPlan:
    """Which assignments each expert computes, grouped by expert (expert 0's slice first)."""

    token: Tensor  # (n_kept,) int64 token of each kept assignment
    assignment: Tensor  # (n_kept,) int64 index into the flattened (tokens * k) assignments
    expert: Tensor  # (n_kept,) int64 expert of each kept assignment (non-decreasing)
    offsets: Tensor  # (n_experts,) int32 end of each expert's slice (cumulative kept counts), on the device
    counts: Tensor  # (n_experts,) int64 routed assignments per expert BEFORE the capacity drop
    kept: Tensor  # (tokens, k) bool, False = dropped by the capacity
    inverse: Tensor | None = None  # dropless and static plans: (tokens * k,) int64 plan position of each assignment
    # static plans only: (tokens * k,) bool, True on the rows inside an expert's slice; the rows after the last slice
    # (padding and dropped assignments, in any order) are computed by no expert and combined with weight 0
    row_valid: Tensor | None = None

    @property
    def sizes(self) -> tuple[int, ...]:
        """(n_experts,) kept assignments per expert as host ints (a host synchronisation on accelerators)."""
        ends = self.offsets.tolist()
        return tuple(b - a for a, b in zip([0] + ends[:-1], ends))

    @property
    def rows(self) -> int:
        """Rows of the plan (n_kept for compact plans; tokens * k for static ones), known without a sync."""
        return self.assignment.shape[0]


def plan_dispatch(
    expert_index: Tensor, num_experts: int, capacity: int | None, priority: Tensor | None = None,
    active: Tensor | None = None,
) -> DispatchPlan:
    """Sort the (tokens, k) assignments by expert and apply the capacity.

    priority None ("position" policy): an over-full expert keeps its first C assignments in token order.
    priority (tokens, k) ("probability" policy): an over-full expert keeps its C highest-priority assignments
    (ties: token order). Dropless plans never synchronise with the host; capacity plans do (the kept count).
    active (tokens, k) bool (variable-count routing, ReMoE): only these assignments exist; the others are cut out
    of the plan like dropped ones (a host synchronisation), so the experts compute the active ones only.
    """
    if active is not None:
        return compact(plan_dispatch_static(expert_index, num_experts, capacity, priority, active=active))
    num_tokens, k = expert_index.shape
    device = expert_index.device
    flat_expert = expert_index.reshape(-1)  # (tokens*k,)
    if priority is None:
        order = torch.argsort(flat_expert, stable=True)  # (tokens*k,) grouped by expert, token order inside
    else:
        by_priority = torch.argsort(priority.detach().reshape(-1), descending=True, stable=True)  # (tokens*k,)
        order = by_priority[torch.argsort(flat_expert[by_priority], stable=True)]  # grouped, priority inside
    sorted_expert = flat_expert[order]  # (tokens*k,) non-decreasing
    counts = expert_counts(flat_expert, num_experts)  # (n_experts,)
    inverse = None
    if capacity is None:
        assignment, expert = order, sorted_expert
        kept_counts = counts
        kept = torch.ones(num_tokens, k, dtype=torch.bool, device=device)
        positions = torch.arange(order.numel(), device=device)
        inverse = torch.empty_like(order).scatter_(0, order, positions)  # (tokens*k,) inverse permutation
    else:
        starts = torch.cumsum(counts, 0) - counts  # (n_experts,) first sorted position of each expert
        rank = torch.arange(order.numel(), device=device) - starts[sorted_expert]  # (tokens*k,) rank in expert
        keep_sorted = rank < capacity  # (tokens*k,)
        assignment, expert = order[keep_sorted], sorted_expert[keep_sorted]  # host sync: the kept count
        kept_counts = counts.clamp(max=capacity)
        kept = torch.zeros(num_tokens * k, dtype=torch.bool, device=device)
        kept = kept.index_fill(0, assignment, True).reshape(num_tokens, k)
    offsets = torch.cumsum(kept_counts, 0).to(torch.int32)  # (n_experts,)
    token = torch.div(assignment, k, rounding_mode="floor")  # (n_kept,)
    return DispatchPlan(token=token, assignment=assignment, expert=expert, offsets=offsets, counts=counts,
                        kept=kept, inverse=inverse)


def plan_dispatch_static(expert_index: Tensor, num_experts: int, capacity: int | Tensor | None,
                         priority: Tensor | None = None, valid: Tensor | None = None,
                         active: Tensor | None = None) -> DispatchPlan:
    """plan_dispatch with shapes that do not depend on the routing: no host synchronisation, also with a capacity
    (an int, or a device tensor from expert_capacity_on_device), with padding (valid (tokens,) bool, False =
    padding) and with variable-count routing (active (tokens, k) bool). The plan holds every one of the tokens * k
    assignments: the kept ones grouped by expert exactly as plan_dispatch orders them, then the dropped, padding and
    inactive ones, which row_valid marks and no expert computes.
    """
    num_tokens, k = expert_index.shape
    device = expert_index.device
    flat_expert = expert_index.reshape(-1)  # (n,) n = tokens * k
    n = flat_expert.numel()
    positions = torch.arange(n, device=device)
    routed = routed_mask(valid, active, n)  # (n,) or None
    key = flat_expert if routed is None else torch.where(routed, flat_expert, num_experts)  # padding: group E
    if priority is None:
        order = torch.argsort(key, stable=True)  # (n,) grouped by expert, token order inside, padding last
    else:
        by_priority = torch.argsort(priority.detach().reshape(-1), descending=True, stable=True)  # (n,)
        order = by_priority[torch.argsort(key[by_priority], stable=True)]
    counts_all = torch.zeros(num_experts + 1, dtype=torch.int64, device=device).scatter_add(
        0, key, torch.ones_like(key))  # (E + 1,)
    counts = counts_all[:num_experts]  # (E,) routed assignments before the capacity drop
    sorted_key = key[order]  # (n,) non-decreasing
    if capacity is None:
        kept_sorted = sorted_key < num_experts  # (n,)
        kept_counts = counts
    else:
        starts = torch.cumsum(counts_all, 0) - counts_all  # (E + 1,)
        rank = positions - starts[sorted_key]  # (n,) rank inside the expert's group
        kept_sorted = (sorted_key < num_experts) & (rank < capacity)  # (n,)
        regroup = torch.argsort(torch.where(kept_sorted, sorted_key, num_experts), stable=True)  # dropped last
        order, sorted_key, kept_sorted = order[regroup], sorted_key[regroup], kept_sorted[regroup]
        kept_counts = counts.clamp(max=capacity)
    offsets = torch.cumsum(kept_counts, 0).to(torch.int32)  # (E,)
    kept = torch.zeros(n, dtype=torch.bool, device=device).scatter(0, order, kept_sorted).reshape(num_tokens, k)
    inverse = torch.empty_like(order).scatter_(0, order, positions)  # (n,) inverse permutation
    return DispatchPlan(token=torch.div(order, k, rounding_mode="floor"), assignment=order,
                        expert=sorted_key.clamp(max=num_experts - 1), offsets=offsets, counts=counts, kept=kept,
                        inverse=inverse, row_valid=positions < offsets[-1].long())


def compact(plan: DispatchPlan) -> DispatchPlan:
    """A static plan cut to its kept rows (host-sized: one synchronisation, free on the CPU): the plan
    plan_dispatch returns, whose rows are exactly the assignments the experts compute."""
    rows = int(plan.offsets[-1]) if plan.offsets.numel() else 0
    return DispatchPlan(token=plan.token[:rows], assignment=plan.assignment[:rows], expert=plan.expert[:rows],
                        offsets=plan.offsets, counts=plan.counts, kept=plan.kept)


class _Regroup(torch.autograd.Function):
    """Dropless row moves between token order and plan order as gathers in both directions (no zero fill and
    scatter-add; deterministic on accelerators). out = src[index] (summed over groups of `k` rows when k > 1);
    the backward is the adjoint gather with `adjoint` / `adjoint_k`."""

    @staticmethod
    def forward(ctx, src, index, k, adjoint, adjoint_k):  # src (rows, d)
        ctx.save_for_backward(adjoint)
        ctx.adjoint_k = adjoint_k
        return _gather_sum(src, index, k)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (adjoint,) = ctx.saved_tensors
        return _gather_sum(grad, adjoint, ctx.adjoint_k), None, None, None, None


def _gather_sum(src: Tensor, index: Tensor, k: int) -> Tensor:
    """src[index] (n, d), then rows summed in consecutive groups of k: (n / k, d)."""
    rows = src.index_select(0, index)
    return rows if k == 1 else rows.view(-1, k, src.shape[1]).sum(1)


def dispatch_rows(x: Tensor, plan: DispatchPlan) -> Tensor:
    """x (tokens, d) -> (plan.rows, d) grouped by expert (plan order)."""
    if plan.inverse is None:
        return x.index_select(0, plan.token)  # backward: index_add
    return _Regroup.apply(x, plan.token, 1, plan.inverse, plan.kept.shape[1])


def _activate(h: Tensor, activation: str) -> Tensor:
    return F.relu(h) if activation == "relu" else F.gelu(h)


def expert_ffn(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, activation: str, dropout: float,
               training: bool) -> Tensor:
    """One expert: Linear d->d_ff, activation, activation dropout, Linear d_ff->d. x (n, d) -> (n, d)."""
    h = _activate(torch.addmm(b1, x, w1), activation)  # (n, d_ff)
    h = F.dropout(h, p=dropout, training=training)
    return torch.addmm(b2, h, w2)  # (n, d)


class _FusedExperts(torch.autograd.Function):
    """y[s_e:t_e] = act(xs[s_e:t_e] @ w1[e] + b1[e]) @ w2[e] + b2[e] for each expert e's slice (no dropout).

    Saves xs and the activation buffer (relu: post-activation; gelu: pre-activation, recomputed in the backward);
    gradients go straight into preallocated tensors, experts with no rows get zero weight gradients.
    """

    @staticmethod
    def forward(ctx, xs, w1, b1, w2, b2, sizes, activation):  # xs (n, d) sorted by expert
        n, d_ff = xs.shape[0], w1.shape[2]
        h = xs.new_empty(n, d_ff)  # (n, d_ff)
        y = xs.new_empty(n, w2.shape[2])  # (n, d)
        start = 0
        for e, size in enumerate(sizes):
            if size:
                rows = slice(start, start + size)
                torch.addmm(b1[e], xs[rows], w1[e], out=h[rows])
                if activation == "relu":
                    a = h[rows].relu_()
                else:
                    a = F.gelu(h[rows])
                torch.addmm(b2[e], a, w2[e], out=y[rows])
            start += size
        ctx.save_for_backward(xs, w1, w2, h)
        ctx.sizes, ctx.activation = sizes, activation
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):  # gy (n, d)
        xs, w1, w2, h = ctx.saved_tensors
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad[:5]
        gy = gy.contiguous()
        gx = torch.empty_like(xs) if need_x else None
        gw1 = torch.empty_like(w1) if need_w1 else None
        gb1 = w1.new_empty(w1.shape[0], w1.shape[2]) if need_b1 else None
        gw2 = torch.empty_like(w2) if need_w2 else None
        gb2 = w2.new_empty(w2.shape[0], w2.shape[2]) if need_b2 else None
        start = 0
        for e, size in enumerate(ctx.sizes):
            if not size:
                for g in (gw1, gb1, gw2, gb2):
                    if g is not None:
                        g[e].zero_()
                continue
            rows = slice(start, start + size)
            start += size
            g_out, pre = gy[rows], h[rows]  # (n_e, d), (n_e, d_ff)
            a = pre if ctx.activation == "relu" else F.gelu(pre)  # (n_e, d_ff) activation
            if gw2 is not None:
                torch.mm(a.t(), g_out, out=gw2[e])
            if gb2 is not None:
                torch.sum(g_out, 0, out=gb2[e])
            if not (need_x or need_w1 or need_b1):
                continue
            ga = torch.mm(g_out, w2[e].t())  # (n_e, d_ff)
            if ctx.activation == "relu":
                ga = torch.ops.aten.threshold_backward(ga, a, 0)  # 0 where the relu output is 0
            else:
                ga = torch.ops.aten.gelu_backward(ga, pre)
            if gw1 is not None:
                torch.mm(xs[rows].t(), ga, out=gw1[e])
            if gb1 is not None:
                torch.sum(ga, 0, out=gb1[e])
            if gx is not None:
                torch.mm(ga, w1[e].t(), out=gx[rows])
        return gx, gw1, gb1, gw2, gb2, None, None


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on a contiguous gradient (grouped_mm's backward rejects expanded ones)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g.contiguous()


def _grouped_mm_experts(xs: Tensor, plan: DispatchPlan, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                        activation: str, dropout: float, training: bool) -> Tensor:
    """Grouped GEMMs over the sorted slices, offsets on the device. xs (n, d) -> (n, d).

    Static plans: grouped_mm leaves the rows after the last slice unspecified (forward and backward), so they are
    set to 0 with torch.where at the input, between the GEMMs and at the output: no garbage or NaN reaches a value
    or a gradient, and the weights' gradients cover the slices only."""
    mask = None if plan.row_valid is None else plan.row_valid.unsqueeze(1)  # (n, 1)
    if mask is not None:
        xs = torch.where(mask, xs, 0)
    h = _ContiguousGrad.apply(F.grouped_mm(xs, w1, offs=plan.offsets))  # (n, d_ff)
    h = F.dropout(_activate(h + b1.index_select(0, plan.expert), activation), p=dropout, training=training)
    if mask is not None:
        h = torch.where(mask, h, 0)
    y = _ContiguousGrad.apply(F.grouped_mm(h, w2, offs=plan.offsets)) + b2.index_select(0, plan.expert)  # (n, d)
    return y if mask is None else torch.where(mask, y, 0)


def _loop_experts(xs: Tensor, sizes: tuple[int, ...], w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                  activation: str, dropout: float, training: bool) -> Tensor:
    """Plain autograd, one expert_ffn per non-empty slice. xs (n, d) -> (n, d)."""
    weights = zip(w1.unbind(0), b1.unbind(0), w2.unbind(0), b2.unbind(0))  # unbind: one gradient buffer each
    outs = [expert_ffn(piece, *wb, activation, dropout, training)
            for piece, wb in zip(torch.split(xs, list(sizes)), weights) if piece.shape[0] > 0]
    return torch.cat(outs, 0) if outs else xs.new_zeros(0, w2.shape[2])


def grouped_mm_supports(x: Tensor, w1: Tensor) -> bool:
    """torch's grouped GEMM (torch >= 2.9) wants float32/bf16/fp16 operands of one dtype and 16-byte aligned rows
    (d, d_ff)."""
    aligned = all(n * x.element_size() % 16 == 0 for n in w1.shape[1:])
    return hasattr(F, "grouped_mm") and x.dtype in GROUPED_MM_DTYPES and w1.dtype == x.dtype and aligned


def choose_backend(x: Tensor, w1: Tensor, dropout: float, training: bool) -> str:
    """fused on the CPU without active dropout; grouped_mm where torch supports the operands; loop otherwise."""
    dropout_active = training and dropout > 0
    if x.device.type == "cpu" and not dropout_active and not torch.is_autocast_enabled("cpu"):
        return "fused"
    return "grouped_mm" if grouped_mm_supports(x, w1) else "loop"


def run_experts(x: Tensor, plan: DispatchPlan, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, activation: str,
                dropout: float, training: bool, backend: str = "auto") -> Tensor:
    """Each expert on its contiguous slice of the kept assignments. x (tokens, d) -> (plan.rows, d) in plan order
    (a static plan's rows after the last slice are 0).

    w1 (E, d, d_ff), b1 (E, d_ff), w2 (E, d_ff, d), b2 (E, d). backend: one of BACKENDS ("auto": choose_backend).
    Only grouped_mm runs without host synchronisation; fused and loop need the slice sizes on the host.
    """
    if backend == "auto":
        backend = choose_backend(x, w1, dropout, training)
    if backend not in BACKENDS:
        raise ValueError(f"unknown expert backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    xs = dispatch_rows(x, plan)  # (rows, d) grouped by expert
    if backend == "grouped_mm":
        return _grouped_mm_experts(xs, plan, w1, b1, w2, b2, activation, dropout, training)
    sizes = plan.sizes
    kept = sum(sizes)
    if kept < xs.shape[0]:  # static plan: the slices, then 0 for the trailing rows
        out = run_experts_on(xs[:kept], sizes, w1, b1, w2, b2, activation, dropout, training, backend)
        return torch.cat([out, out.new_zeros(xs.shape[0] - kept, out.shape[1])])
    return run_experts_on(xs, sizes, w1, b1, w2, b2, activation, dropout, training, backend)


def run_experts_on(xs: Tensor, sizes: tuple[int, ...], w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                   activation: str, dropout: float, training: bool, backend: str) -> Tensor:
    """The host-sized backends (fused, loop) on rows already grouped by expert. xs (n, d) -> (n, d)."""
    if backend == "fused" and not (training and dropout > 0):
        return _FusedExperts.apply(xs, w1, b1, w2, b2, sizes, activation)
    return _loop_experts(xs, sizes, w1, b1, w2, b2, activation, dropout, training)


def all_experts(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, activation: str, dropout: float,
                training: bool) -> Tensor:
    """Every expert on every token (dense estimators). x (tokens, d) -> (tokens, E, d)."""
    h = torch.einsum("td,edf->tef", x, w1) + b1  # (tokens, E, d_ff)
    h = F.dropout(_activate(h, activation), p=dropout, training=training)
    return torch.einsum("tef,efd->ted", h, w2) + b2  # (tokens, E, d)


def combine(expert_out: Tensor, plan: DispatchPlan, gate: Tensor, num_tokens: int) -> Tensor:
    """y_t = sum over token t's kept assignments of gate * expert output, in float32. -> (tokens, d) float32.

    expert_out (rows, d) in plan order; gate (tokens, k) float32 (carries the router gradient). A static plan's
    rows after the last slice (dropped, padding) get weight 0, through torch.where (their gate gets no gradient).
    """
    weight = gate.reshape(-1).index_select(0, plan.assignment).unsqueeze(1)  # (rows, 1)
    weighted = expert_out.float() * weight  # (rows, d)
    if plan.row_valid is not None:
        weighted = torch.where(plan.row_valid.unsqueeze(1), weighted, 0)
    if plan.inverse is not None:  # dropless or static: token t's k rows are at inverse[t*k : t*k+k]
        return _Regroup.apply(weighted, plan.inverse, plan.kept.shape[1], plan.token, 1)
    y = weighted.new_zeros(num_tokens, expert_out.shape[1])  # (tokens, d)
    return y.index_add(0, plan.token, weighted)
