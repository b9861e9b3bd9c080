"""The GPU check: one prepared command for an accelerator machine (issue "GPU"); also runs on the CPU.

    python -m bench gpu-check [--device cuda|cpu] [--quick] [--json PATH] [--work DIR] [--parts units,layer,train]

Parts (bench/gpu_units.py, bench/gpu_layer.py, bench/gpu_train.py):
  units  every estimator's MoE layer forward + backward on the device == the CPU result (float32 and bfloat16),
         grouped_mm == loop, no host synchronisation in the training forward + backward (padding, dropless and
         with a capacity; CUDA: torch.cuda.set_sync_debug_mode("error"))
  layer  MoE layer vs dense FFN and vs the one-hot einsum formulation at GPU sizes (CUDA events, medians,
         interleaved), every estimator vs topk
  train  Switch vs stock fairseq transformer tokens/s through fairseq's Trainer, then smx train (300 updates on
         CUDA) + smx eval bleu
One JSON (default bench/results/gpu_check_<device>.json, the device named inside) and the tables printed.
--device cpu --quick runs every part at small sizes in a few minutes (a test does), so the script is known to work
before an accelerator sees it. On the GPU machine: see README "Performance" for the command and what travels.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from bench import gpu_layer, gpu_train, gpu_units
from bench.harness import RESULTS_DIR, command_line, git_commit

PARTS = ("units", "layer", "train")


def device_info(device: torch.device) -> dict:
    info = {"device": device.type, "torch": torch.__version__, "python": platform.python_version(), **git_commit()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update({"device_name": props.name, "device_memory_gib": round(props.total_memory / 2**30, 1),
                     "cuda": torch.version.cuda, "capability": f"{props.major}.{props.minor}"})
    else:
        info["device_name"] = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return info


def print_units(console: Console, units: dict) -> None:
    table = Table(title="units: device vs CPU, backends, host syncs")
    for col in ("check", "case", "error / syncs", "tolerance", ""):
        table.add_column(col)
    for row in units["equivalence"]:
        table.add_row("device == CPU", f"{row['estimator']} k={row['k']} {row['dtype']} {row['mode']}",
                      f"{row['max_rel_err']:.2e} ({row['worst']})", f"{row['tolerance']:.0e}", _ok(row["ok"]))
    for row in units["backends"]:
        table.add_row("grouped_mm == loop", f"{row['dtype']} capacity {row['capacity_factor']}",
                      f"{row['max_rel_err']:.2e} ({row['worst']})", f"{row['tolerance']:.0e}", _ok(row["ok"]))
    for row in units["host_syncs"]:
        found = ", ".join(f"{k} x{v}" for k, v in row["syncs"].items()) or "none"
        if row["cuda_sync_debug_error"]:
            found += f"; CUDA: {row['cuda_sync_debug_error']}"
        table.add_row("no host sync", f"{row['estimator']} k={row['k']} capacity {row['capacity_factor']}", found,
                      "", _ok(row["ok"]))
    console.print(table)


def print_rows(console: Console, title: str, rows: list[dict]) -> None:
    table = Table(title=title)
    for col in ("row", "A", "B", "median A", "median B", "ratio A/B", "target", ""):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["a"], r["b"], f"{r['median_a']:,.3f} {r['unit']}", f"{r['median_b']:,.3f} {r['unit']}",
                      f"{r['ratio']:.3f}x", r["target"], "" if r["met"] is None else _ok(r["met"]))
    console.print(table)


def _ok(value: bool) -> str:
    return "[green]ok[/]" if value else "[red]FAILED[/]"


def run(args: argparse.Namespace) -> dict:
    console = Console(width=200)
    for name in ("fairseq", "hydra"):  # the in-process Trainer's INFO lines would bury the tables
        logging.getLogger(name).setLevel(logging.WARNING)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu-check: --device cuda but torch sees no CUDA device (use --device cpu for the CPU run)")
    parts = [p.strip() for p in args.parts.split(",")]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"gpu-check: --parts {','.join(unknown)} unknown; choose from {','.join(PARTS)}")
    doc: dict = {"benchmark": "gpu_check", "command": command_line(), "quick": args.quick, **device_info(device),
                 "parts": {}, "seconds": {}}
    cuda = device.type == "cuda"
    small = args.quick and not cuda
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="smx-gpu-check-"))
    for part in parts:
        begin = time.monotonic()
        console.print(f"[bold]gpu-check: {part}[/] on {doc['device_name']}")
        if part == "units":
            doc["parts"]["units"] = units = gpu_units.run(device)
            print_units(console, units)
        elif part == "layer":
            rows = gpu_layer.run(device, torch.bfloat16, tokens=512 if small else 16384, d=64 if small else 1024,
                                 d_ff=128 if small else 4096, experts=[8, 64] if small else [8, 16, 64], ks=[1, 2],
                                 estimator_experts=8 if small else 16, repeats=3 if small else 15,
                                 warmup=1 if small else 3, inner=1 if small else 5)
            doc["parts"]["layer"] = [asdict(r) for r in rows]
            print_rows(console, "MoE layer forward + backward (bf16)", doc["parts"]["layer"])
        else:
            row = gpu_train.throughput(device, Path(args.data_root), args.quick, repeats=3 if small else 20,
                                       warmup=1 if small else 5)
            engine = gpu_train.engine_run(device, Path(args.data_root), work, args.quick)
            doc["parts"]["train"] = {"throughput": asdict(row), "engine": engine}
            print_rows(console, "training tokens/s", [doc["parts"]["train"]["throughput"]])
            console.print(f"engine: {engine.get('updates')} updates in {engine.get('train_wall_s')} s, median wps "
                          f"{engine.get('median_wps')}, BLEU {engine.get('bleu')}, rc train {engine.get('train_rc')}"
                          f" eval {engine.get('eval_rc')}")
            for key in ("train_error", "eval_error"):
                if key in engine:
                    console.print(f"[red]{key}[/]: {engine[key]}")
        doc["seconds"][part] = round(time.monotonic() - begin, 1)
    doc["ok"] = check_ok(doc)
    path = Path(args.json) if args.json else RESULTS_DIR / f"gpu_check_{device.type}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    console.print(f"[bold]gpu-check {'passed' if doc['ok'] else 'FAILED'}[/]: correctness checks "
                  f"{'all ok' if doc['ok'] else 'not all ok'}; speed targets are reported, not enforced; wrote {path}")
    return doc


def check_ok(doc: dict) -> bool:
    """Correctness: every unit check, and the engine run trained and evaluated (speed targets are reported)."""
    units = doc["parts"].get("units", {"ok": True})
    engine = doc["parts"].get("train", {}).get("engine", {"train_rc": 0, "eval_rc": 0})
    return bool(units["ok"]) and engine.get("train_rc") == 0 and engine.get("eval_rc") == 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--work", default=None, help="directory for the training run (default: a new temp dir)")
    parser.add_argument("--data-root", default="data", help="where synthetic-mt is (prepared on first use)")


def quick(args: argparse.Namespace) -> None:
    """--quick: small sizes on the CPU (the test suite's run); on CUDA the full sizes still run."""
