"""python -m bench {moe-layer, estimators, variants, train-throughput, gpu-check, all, peak-rss} [options]; see
bench/__init__.py."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# subcommand -> module under bench/ (each has add_arguments(parser), quick(args), run(args) -> dict)
SUBCOMMANDS = {
    "moe-layer": "bench.moe_layer",
    "estimators": "bench.estimators",
    "variants": "bench.variants",
    "train-throughput": "bench.train_throughput",
    "gpu-check": "bench.gpu_check",
}
NOT_IN_ALL = ("gpu-check",)  # the accelerator machine's one prepared check: run on its own


def common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every core)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up calls of each side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="output JSON (default bench/results/<name>.json)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run; noisier ratios)")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS",
                        help="first wait up to SECONDS for other processes to leave the CPU idle")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "peak-rss":
        from bench.peak_rss import main as peak_rss_main
        return peak_rss_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, module_name in SUBCOMMANDS.items():
        module = modules[name] = importlib.import_module(module_name)
        p = sub.add_parser(name, help=(module.__doc__ or "").splitlines()[0])
        common(p)
        module.add_arguments(p)
    p_all = sub.add_parser("all", help="every benchmark above, in turn, with their default options")
    common(p_all)
    sub.add_parser("peak-rss", help="peak RSS of a command: python -m bench peak-rss [--json F] -- CMD ...")
    args = parser.parse_args(argv)
    names = [n for n in SUBCOMMANDS if n not in NOT_IN_ALL] if args.command == "all" else [args.command]
    for name in names:
        module = modules[name]
        if args.command == "all":
            p = argparse.ArgumentParser()
            common(p)
            module.add_arguments(p)
            sub_args = p.parse_args([])
            for key in ("threads", "warmup", "seed", "quick", "wait_idle"):
                setattr(sub_args, key, getattr(args, key))
        else:
            sub_args = args
        if sub_args.quick:
            module.quick(sub_args)
        if sub_args.wait_idle > 0:
            from bench.harness import wait_idle
            wait_idle(sub_args.wait_idle)
        module.run(sub_args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
