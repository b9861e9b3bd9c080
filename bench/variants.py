"""Today's routing variants (issue 16): the MoE layer's forward+backward cost of each against plain topk.

    python -m bench variants [--tokens 4096 --d-model 512 --d-ff 2048 --experts 8] [--quick]

Rows (ratio = variant / topk of the medians, same tokens, same upstream gradient, interleaved):
  loss-free balancing (top-1)                           topk + selection bias vs topk
  global-batch balance loss (top-1, one process)        its counts bookkeeping vs the local loss
  sigmoid gating, top-2                                 vs softmax top-2
  shared + fine-grained experts                         2E experts of d_ff/4 at k=3 + 1 shared expert of d_ff/4
                                                        (the same active size: 4 x d_ff/4 = a top-1 layer's d_ff)
                                                        vs top-1 Switch
  ReMoE at its target sparsity (1 - 1/E)                a router bias puts k/E of the gates on, as training reaches
                                                        it; vs top-1 (the experts per token are reported)
  ReMoE at initialization (about E/2 experts per token) its dense first stage, vs top-1           informational
"""

from __future__ import annotations

import argparse

import torch

from bench.harness import command_line, environment, interleave, make_row, report, setup_threads
from bench.moe_layer import smx_step
from smx.moe import MoEConfig, MoEFeedForward


def build(args: argparse.Namespace, **config) -> MoEFeedForward:
    torch.manual_seed(args.seed)  # the same router and expert initialization on every side
    return MoEFeedForward(args.d_model, args.d_ff, MoEConfig(**{"num_experts": args.experts, **config}))


@torch.no_grad()
def at_sparsity(moe: MoEFeedForward, x: torch.Tensor, active_fraction: float) -> float:
    """Give the ReMoE router a bias that keeps `active_fraction` of the gates on for x; returns the fraction."""
    z = moe.router(x)
    moe.router.proj.bias.fill_(0.0)
    moe.router.proj.bias.sub_(torch.quantile(z.reshape(-1), 1 - active_fraction))
    return float((moe.router(x) > 0).float().mean())


def run(args: argparse.Namespace) -> dict:
    threads = setup_threads(args.threads)
    env = environment(threads)
    torch.manual_seed(args.seed)
    x = torch.randn(args.tokens, args.d_model, requires_grad=True)  # (T, d)
    g = torch.randn(args.tokens, args.d_model)  # (T, d) fixed upstream gradient
    E = args.experts
    top1 = build(args, estimator="topk")
    top2 = build(args, estimator="topk", k=2)
    fine = dict(num_experts=2 * E, k=3, shared_experts=1, expert_ffn_dim=args.d_ff // 4)
    remoe_target = build(args, estimator="remoe", router_bias=True)
    on = at_sparsity(remoe_target, x, 1 / E)
    remoe_init = build(args, estimator="remoe")
    with torch.no_grad():
        on_init = float((remoe_init.router(x) > 0).float().mean())
    sides = [
        ("loss-free balancing", build(args, estimator="topk", balance="loss_free"), top1,
         "top-1; the once-per-update bias step is not in the layer call"),
        ("global-batch balance loss", build(args, estimator="topk", balance="global_loss"), top1,
         "top-1, one process (no all-reduce)"),
        ("sigmoid gating", build(args, estimator="topk", k=2, score="sigmoid"), top2, "top-2, both sides"),
        ("shared + fine-grained experts", build(args, estimator="topk", **fine), top1,
         f"{2 * E} experts of FFN {args.d_ff // 4}, k=3, 1 shared (active 4 x {args.d_ff // 4}) vs top-1 of "
         f"{E} x {args.d_ff}"),
        ("ReMoE at its target sparsity", remoe_target, top1, f"{on * E:.2f} experts per token (target 1)"),
        ("ReMoE at initialization", remoe_init, top1, f"{on_init * E:.2f} experts per token: the dense first stage"),
    ]
    rows = []
    for name, moe, base, notes in sides:
        pairs = interleave(smx_step(moe, x, g), smx_step(base, x, g), args.repeats, args.warmup)
        rows.append(make_row(f"MoE layer fwd+bwd: {name}", name, "topk k=2" if base is top2 else "topk k=1", pairs,
                             notes=notes))
    shape = f"tokens {args.tokens}, d {args.d_model}, FFN {args.d_ff}, {E} experts"
    return report("Routing variants: MoE layer cost against topk (CPU)", "variants", {**env, "shape": shape}, rows,
                  args.json, command_line(), vars(args))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--d-ff", type=int, default=2048)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved pairs per row")


def quick(args: argparse.Namespace) -> None:
    args.repeats = min(args.repeats, 3)
