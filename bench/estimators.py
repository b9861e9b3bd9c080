"""Estimator overhead: each estimator against plain top-k, in the MoE layer and in a full Switch training update.

    python -m bench estimators [--step-estimators sparsemixer,...] [--skip-dense] [--quick]

Rows (ratio = estimator / topk of the medians):
  estimator call alone (router logits -> Routing, forward+backward through the gate), microseconds  informational
  MoE layer forward+backward (tokens 4096, d 512, FFN 2048, 8 experts, dropless)                   informational
  full training update of smx_switch_transformer_small (8 experts, layers 0,2,4 of encoder and decoder, fairseq's
  task.train_step + Adam step) on the same synthetic-mt batches: sparsemixer vs topk                target <= 1.02
Dense estimators (straight_through, densemixer) compute every expert by definition: their rows are the cost of
that (--skip-dense leaves them out).
--control adds an A/A row (topk against an identical topk model): the noise floor of the training-update rows.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from bench import fairseq_models as fm
from bench.harness import command_line, environment, interleave, make_row, report, setup_threads
from bench.moe_layer import smx_step
from smx import estimators
from smx.moe import MoEConfig, MoEFeedForward

SPARSE = ("sparsemixer", "sparsemixer_1st", "sparsemixer_inf", "sparsemixer_v2", "default_moe")
DENSE = ("straight_through", "densemixer")


def estimator_fn(name: str, logits: torch.Tensor, g: torch.Tensor):
    est = estimators.get(name)

    dense_g = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))  # (tokens, E) <g, E_e(x)> stand-in

    def call() -> None:
        z = logits.detach().requires_grad_()
        routing = est(z, k=1, training=True)
        loss = (routing.gate * g).sum()
        if routing.dense_weight is not None:  # dense estimators: the router gradient goes through dense_weight
            loss = loss + (routing.dense_weight * dense_g).sum()
        loss.backward()
    return call


def layer_rows(args: argparse.Namespace, names: list[str]) -> list:
    torch.manual_seed(args.seed)
    x = torch.randn(args.tokens, args.d_model, requires_grad=True)
    g = torch.randn(args.tokens, args.d_model)
    logits = torch.randn(args.tokens, args.experts)
    gate_grad = torch.randn(args.tokens, 1)
    layers = {}
    for name in ["topk", *names]:
        torch.manual_seed(args.seed)  # identical weights on every side
        layers[name] = MoEFeedForward(args.d_model, args.d_ff, MoEConfig(num_experts=args.experts, estimator=name))
    rows = []
    for name in names:
        pairs = interleave(estimator_fn(name, logits, gate_grad), estimator_fn("topk", logits, gate_grad),
                           args.repeats * 3, args.warmup)
        row = make_row(f"estimator call: {name}", name, "topk", pairs, notes=f"{args.tokens} x {args.experts} logits")
        rows.append(replace(row, notes=row.notes + f"; extra cost {(row.median_a - row.median_b) * 1e3:.0f} us"))
    for name in names:
        pairs = interleave(smx_step(layers[name], x, g), smx_step(layers["topk"], x, g), args.repeats, args.warmup)
        dense = estimators.get(name).dense
        rows.append(make_row(f"MoE layer fwd+bwd: {name}", name, "topk", pairs,
                             notes="dense estimator: every expert computed" if dense else ""))
    return rows


def step_rows(args: argparse.Namespace) -> list:
    data = fm.ensure_data(args.data_root)
    rows = []
    names = [n for n in args.step_estimators.split(",") if n] + (["topk"] if args.control else [])
    argv = lambda est: fm.moe_args(data, args.arch, args.max_tokens, args.seed, est, args.step_experts)  # noqa: E731
    base = fm.build("topk", argv("topk"), args.seed)
    samples = fm.batches(base, args.max_tokens, args.batches, args.seed)
    for name in names:
        other = fm.build(name, argv(name), args.seed)
        base.update = other.update = 0
        pairs = interleave(fm.update_fn(other, samples), fm.update_fn(base, samples), args.step_repeats,
                           args.warmup)
        target = "<= 1.02" if name == "sparsemixer" else ""
        label = "topk (A/A control: two identical models)" if name == "topk" else name
        rows.append(make_row(f"training update: {label}", f"{args.arch} [{name}]", f"{args.arch} [topk]", pairs,
                             target, notes=f"{args.step_experts} experts, max_tokens {args.max_tokens}, "
                                           f"{len(samples)} batches of synthetic-mt cycled, same batches both sides"))
        del other
    return rows


def run(args: argparse.Namespace) -> dict:
    threads = setup_threads(args.threads)
    env = environment(threads)
    names = [n for n in SPARSE] + ([] if args.skip_dense else list(DENSE))
    rows = layer_rows(args, names) if not args.skip_layer else []
    if not args.skip_step:
        rows += step_rows(args)
    return report("Router gradient estimators: overhead against topk (CPU)", "estimators", env, rows, args.json,
                  command_line(), vars(args))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--d-ff", type=int, default=2048)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7, help="interleaved pairs per layer row")
    parser.add_argument("--skip-dense", action="store_true", help="leave out straight_through and densemixer")
    parser.add_argument("--skip-layer", action="store_true", help="only the training-update rows")
    parser.add_argument("--skip-step", action="store_true", help="only the estimator and layer rows")
    parser.add_argument("--step-estimators", default="sparsemixer", help="comma list for the training-update rows")
    parser.add_argument("--arch", default="smx_switch_transformer_small")
    parser.add_argument("--step-experts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--batches", type=int, default=4, help="distinct batches cycled by both sides")
    parser.add_argument("--step-repeats", type=int, default=8, help="interleaved pairs of training updates")
    parser.add_argument("--control", action="store_true", help="add an A/A row (topk vs an identical topk model)")
    parser.add_argument("--data-root", type=Path, default=Path("data"))


def quick(args: argparse.Namespace) -> None:
    args.repeats, args.step_repeats = min(args.repeats, 3), min(args.step_repeats, 3)
