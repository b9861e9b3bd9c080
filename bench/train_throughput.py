"""End-to-end training throughput: a Switch model against fairseq's stock dense transformer of the same active size.

    python -m bench train-throughput [--moe-arch smx_switch_transformer_small --dense-arch transformer_iwslt_de_en]
                                     [--experts 8 --estimator sparsemixer] [--quick]

Both models are built in this process through fairseq's registry (the stock `transformer_iwslt_de_en` with the stock
label-smoothed criterion; smx's `smx_switch_transformer_small` with MoE layers 0,2,4 of encoder and decoder, every
expert the size of the dense FFN, and the smx MoE criterion), trained with fairseq's task.train_step + Adam on the
same pre-collated synthetic-mt batches, updates interleaved. Tokens/s = target tokens per update / update time
(fairseq's wps). Ratio = Switch tok/s / dense tok/s, target >= 0.90.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import fairseq_models as fm
from bench.harness import command_line, environment, interleave, make_row, report, setup_threads


def run(args: argparse.Namespace) -> dict:
    threads = setup_threads(args.threads)
    env = environment(threads)
    data = fm.ensure_data(args.data_root)
    moe = fm.build("switch", fm.moe_args(data, args.moe_arch, args.max_tokens, args.seed, args.estimator,
                                         args.experts), args.seed)
    dense = fm.build("dense", fm.dense_args(data, args.dense_arch, args.max_tokens, args.seed), args.seed)
    samples = fm.batches(dense, args.max_tokens, args.batches, args.seed)
    pairs = interleave(fm.update_fn(moe, samples), fm.update_fn(dense, samples), args.repeats, args.warmup)
    row = make_row("training tokens/s: Switch vs dense", f"{args.moe_arch} ({args.experts} experts, {args.estimator})",
                   f"{args.dense_arch} (stock fairseq)", pairs, ">= 0.90", throughput=True,
                   notes=f"synthetic-mt, max_tokens {args.max_tokens}, {len(samples)} batches cycled, same batches "
                         f"both sides; parameters {moe.num_params:,} (Switch) vs {dense.num_params:,} (dense)",
                   extra={"params_moe": moe.num_params, "params_dense": dense.num_params})
    return report("End-to-end training throughput (CPU, fairseq in-process)", "train_throughput", env, [row],
                  args.json, command_line(), vars(args))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--moe-arch", default="smx_switch_transformer_small")
    parser.add_argument("--dense-arch", default="transformer_iwslt_de_en")
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--estimator", default="sparsemixer")
    parser.add_argument("--max-tokens", type=int, default=4096)
    parser.add_argument("--batches", type=int, default=4, help="distinct batches cycled by both sides")
    parser.add_argument("--repeats", type=int, default=8, help="interleaved pairs of training updates")
    parser.add_argument("--data-root", type=Path, default=Path("data"))


def quick(args: argparse.Namespace) -> None:
    args.repeats = min(args.repeats, 3)
