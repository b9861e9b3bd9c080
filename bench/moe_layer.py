"""MoE layer forward+backward against a dense FFN of the same active size, and against the one-hot einsum baseline.

    python -m bench moe-layer [--tokens 8192 --d-model 512 --d-ff 2048 --experts 16] [--backends] [--quick]

Rows (ratio = A / B of the medians; each call is one forward and one backward with a fixed upstream gradient,
parameter and input gradients reset to None between calls as an optimizer's zero_grad does):
  smx MoE (top-1 dropless, topk) vs dense FFN (Linear d->d_ff, relu, Linear d_ff->d)      target <= 1.10
  one-hot einsum MoE (capacity 1.25) vs smx MoE (the speed-up of smx)                      target >= 4
  one-hot einsum MoE vs dense FFN                                                          informational
  --backends: every smx expert backend (fused, grouped_mm, loop) vs dense FFN              informational
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch
from torch import Tensor, nn

from bench.einsum_moe import EinsumMoE
from bench.harness import command_line, environment, interleave, make_row, report, setup_threads
from smx.moe import MoEConfig, MoEFeedForward

AUX_WEIGHT = 0.01  # balance-loss weight of the MoE sides (its backward is part of a real step)


def zero_grads(*tensors_or_modules) -> None:
    for obj in tensors_or_modules:
        params = obj.parameters() if isinstance(obj, nn.Module) else [obj]
        for p in params:
            p.grad = None


def dense_step(ffn: nn.Module, x: Tensor, g: Tensor) -> Callable[[], None]:
    def step() -> None:
        zero_grads(ffn, x)
        ffn(x).backward(g)
    return step


def smx_step(moe: MoEFeedForward, x: Tensor, g: Tensor) -> Callable[[], None]:
    def step() -> None:
        zero_grads(moe, x)
        out = moe(x)
        torch.autograd.backward([out.y, out.aux_loss(AUX_WEIGHT)], [g, torch.ones(())])
    return step


def einsum_step(moe: EinsumMoE, x: Tensor, g: Tensor) -> Callable[[], None]:
    one = torch.tensor(AUX_WEIGHT)

    def step() -> None:
        zero_grads(moe, x)
        y, balance = moe(x)
        torch.autograd.backward([y, balance], [g, one])
    return step


def build(args: argparse.Namespace) -> tuple[Tensor, Tensor, nn.Module, MoEFeedForward, EinsumMoE]:
    torch.manual_seed(args.seed)
    x = torch.randn(args.tokens, args.d_model, requires_grad=True)  # (T, d) as the previous layer would hand it
    g = torch.randn(args.tokens, args.d_model)  # (T, d) fixed upstream gradient
    dense = nn.Sequential(nn.Linear(args.d_model, args.d_ff), nn.ReLU(), nn.Linear(args.d_ff, args.d_model))
    moe = MoEFeedForward(args.d_model, args.d_ff, MoEConfig(num_experts=args.experts, k=1, estimator="topk"))
    einsum = EinsumMoE(args.d_model, args.d_ff, args.experts, capacity_factor=args.capacity_factor)
    return x, g, dense, moe, einsum


def run(args: argparse.Namespace) -> dict:
    threads = setup_threads(args.threads)
    env = environment(threads)
    x, g, dense, moe, einsum = build(args)
    with torch.no_grad():
        load = torch.bincount(moe.router(x).argmax(1), minlength=args.experts).float() / args.tokens
    shape = f"tokens {args.tokens}, d {args.d_model}, FFN {args.d_ff}, {args.experts} experts"
    routing_note = f"{shape}; top-1 load max {load.max().item():.3f} min {load.min().item():.3f} (random router)"
    rows = []
    pairs = interleave(smx_step(moe, x, g), dense_step(dense, x, g), args.repeats, args.warmup)
    rows.append(make_row("MoE layer fwd+bwd vs dense FFN", "smx MoE (top-1 dropless)", "dense FFN", pairs,
                         "<= 1.10", notes=routing_note, extra={"load": load.tolist()}))
    pairs = interleave(einsum_step(einsum, x, g), smx_step(moe, x, g), args.einsum_repeats, args.warmup)
    rows.append(make_row("speed-up over one-hot einsum", f"einsum MoE (cf {args.capacity_factor})",
                         "smx MoE (top-1 dropless)", pairs, ">= 4",
                         notes="ratio = einsum time / smx time (the fairseq / DeepSpeed formulation)"))
    pairs = interleave(einsum_step(einsum, x, g), dense_step(dense, x, g), args.einsum_repeats, args.warmup)
    rows.append(make_row("einsum baseline vs dense FFN", f"einsum MoE (cf {args.capacity_factor})", "dense FFN",
                         pairs))
    if args.backends:
        for backend in ("fused", "grouped_mm", "loop"):
            moe.expert_backend = backend
            pairs = interleave(smx_step(moe, x, g), dense_step(dense, x, g), args.repeats, args.warmup)
            rows.append(make_row(f"backend {backend} vs dense FFN", f"smx MoE [{backend}]", "dense FFN", pairs))
        moe.expert_backend = "auto"
    return report("MoE layer forward+backward (CPU)", "moe_layer", {**env, "shape": shape}, rows, args.json,
                  command_line(), vars(args))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--d-ff", type=int, default=2048)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--capacity-factor", type=float, default=1.25, help="of the einsum baseline")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved pairs per row")
    parser.add_argument("--einsum-repeats", type=int, default=5, help="pairs for the (slow) einsum rows")
    parser.add_argument("--backends", action="store_true", help="also time every smx expert backend")


def quick(args: argparse.Namespace) -> None:
    args.repeats, args.einsum_repeats = min(args.repeats, 5), min(args.einsum_repeats, 3)
