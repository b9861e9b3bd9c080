"""The GPU check's layer part: MoE layer forward + backward at GPU sizes, timed with CUDA events, interleaved.

Rows (ratio = A / B of the medians, per (E, k)):
  smx MoE (dropless, topk, sync-free form) vs a dense FFN of the same active size (hidden k * d_ff)
      targets on CUDA, top-1: <= 1.15 at E=8, <= 1.30 at E=64 (others informational)
  one-hot einsum MoE (top-1, capacity 1.25; the fairseq / DeepSpeed formulation) vs smx MoE       informational
  every estimator vs topk at one size (E=16 on CUDA, same k)   target <= 1.02 on CUDA, except the estimators that
      compute every expert (DenseMixer, straight-through: `dense`) and ReMoE (its expert count follows the learned
      sparsity), which are reported without a target
On the CPU (--device cpu) the same rows run at small sizes, without targets (they are the GPU's).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from bench.einsum_moe import EinsumMoE
from bench.harness import Pairs, Row, interleave, make_row
from bench.moe_layer import zero_grads
from smx import estimators
from smx.moe import MoEConfig, MoEFeedForward

AUX_WEIGHT = 0.01
TOP1_TARGETS = {8: "<= 1.15", 64: "<= 1.30"}  # the targets for top-1 against the dense FFN, on CUDA


def timed_pairs(fn_a: Callable[[], object], fn_b: Callable[[], object], repeats: int, warmup: int,
                device: torch.device, inner: int = 1) -> Pairs:
    """CUDA: `repeats` interleaved pairs (A B, B A, ...), each side `inner` calls between two CUDA events, seconds
    per call. CPU: bench.harness.interleave (wall clock, busy-machine pairs re-run)."""
    if device.type != "cuda":
        return interleave(fn_a, fn_b, repeats, warmup)
    for _ in range(warmup):
        fn_a(), fn_b()
    torch.cuda.synchronize()
    times: dict[str, list[float]] = {"a": [], "b": []}
    for i in range(repeats):
        for side in ("ab" if i % 2 == 0 else "ba"):
            fn = fn_a if side == "a" else fn_b
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            times[side].append(start.elapsed_time(end) / 1e3 / inner)
    return Pairs(times_a=times["a"], times_b=times["b"], work_a=[], work_b=[], other_cores=[-1.0] * repeats,
                 discarded=0)


def moe_step(layer: nn.Module, x: Tensor, g: Tensor) -> Callable[[], None]:
    one = torch.tensor(AUX_WEIGHT, device=x.device)

    def step() -> None:
        zero_grads(layer, x)
        out = layer(x)
        if isinstance(out, tuple):  # EinsumMoE: (y, balance)
            torch.autograd.backward(list(out), [g, one])
        else:
            torch.autograd.backward([out.y, out.aux_loss(AUX_WEIGHT)], [g, torch.ones_like(one)])
    return step


def dense_step(ffn: nn.Module, x: Tensor, g: Tensor) -> Callable[[], None]:
    def step() -> None:
        zero_grads(ffn, x)
        ffn(x).backward(g)
    return step


def moe_layer(d: int, d_ff: int, experts: int, k: int, estimator: str, device: torch.device,
              dtype: torch.dtype) -> MoEFeedForward:
    layer = MoEFeedForward(d, d_ff, MoEConfig(num_experts=experts, k=k, estimator=estimator))
    layer = layer.to(device=device, dtype=dtype).train()
    layer.sync_free = True
    return layer


def rows(device: torch.device, dtype: torch.dtype, tokens: int, d: int, d_ff: int, experts: list[int],
         ks: list[int], estimator_experts: int, repeats: int, warmup: int, inner: int) -> Iterator[Row]:
    """The rows in turn (a generator: a caller keeps the rows timed before a failure, e.g. out of memory)."""
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    x = torch.randn(tokens, d, device=device, dtype=dtype, requires_grad=True)  # (T, d)
    g = torch.randn(tokens, d, device=device, dtype=dtype)  # (T, d)
    shape = f"tokens {tokens}, d {d}, FFN {d_ff}, {str(dtype).removeprefix('torch.')}, {device.type}"
    for k in ks:
        dense = nn.Sequential(nn.Linear(d, k * d_ff), nn.ReLU(), nn.Linear(k * d_ff, d)).to(device, dtype)
        for e in experts:
            moe = moe_layer(d, d_ff, e, k, "topk", device, dtype)
            target = TOP1_TARGETS.get(e, "") if cuda and k == 1 else ""
            pairs = timed_pairs(moe_step(moe, x, g), dense_step(dense, x, g), repeats, warmup, device, inner)
            yield make_row(f"E={e} top-{k}: MoE vs dense", f"smx MoE (E={e}, top-{k}, dropless)",
                           f"dense FFN ({k} x {d_ff})", pairs, target, notes=shape)
            if k == 1:
                einsum = EinsumMoE(d, d_ff, e).to(device, dtype)
                pairs = timed_pairs(moe_step(einsum, x, g), moe_step(moe, x, g), max(3, repeats // 2), warmup,
                                    device, inner)
                yield make_row(f"E={e} top-1: einsum vs smx", "one-hot einsum MoE (cf 1.25)", f"smx MoE (E={e}, top-1)",
                               pairs, notes="ratio = einsum time / smx time")
                del einsum
            del moe
    for name in estimators.names():
        est = estimators.get(name)
        for k in (1, 2):
            try:
                est.validate(k, estimator_experts)
            except ValueError:
                continue
            if name == "topk":
                continue
            base = moe_layer(d, d_ff, estimator_experts, k, "topk", device, dtype)
            other = moe_layer(d, d_ff, estimator_experts, k, name, device, dtype)
            pairs = timed_pairs(moe_step(other, x, g), moe_step(base, x, g), repeats, warmup, device, inner)
            every, variable = type(est).dense, type(est).variable_k
            note = "computes every expert: reported apart" if every else (
                "ReLU gates at initialization (about half the experts per token; the count follows the learned "
                "sparsity): reported apart" if variable else shape)
            del base, other
            yield make_row(f"{name} vs topk (E={estimator_experts}, top-{k})", name, "topk", pairs,
                           "<= 1.02" if cuda and not (every or variable) else "", notes=note)
            break  # one k per estimator: top-1 where it routes top-1

