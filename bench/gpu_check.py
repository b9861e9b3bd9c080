"""The GPU check: one prepared command for an accelerator machine (issue "GPU"); also runs on the CPU.

    python -m bench gpu-check [--device cuda|cpu] [--quick] [--json PATH] [--work DIR] [--parts units,layer,train]
                              [--layer-budget-s SECONDS]

Parts (bench/gpu_units.py, bench/gpu_layer.py, bench/gpu_train.py):
  units  every estimator's MoE layer forward + backward on the device == the CPU result (float32 and bfloat16),
         grouped_mm == loop, no host synchronisation in the training forward + backward (padding, dropless and
         with a capacity; CUDA: torch.cuda.set_sync_debug_mode("error"))
  layer  MoE layer vs dense FFN and vs the one-hot einsum formulation at GPU sizes (CUDA events, medians,
         interleaved), every estimator vs topk
  train  Switch vs stock fairseq transformer tokens/s through fairseq's Trainer (CUDA: in bf16 where the GPU has it,
         and in fp16 beside it, informational), then smx train (300 updates on CUDA) + smx eval bleu
One JSON (default bench/results/gpu_check_<device>.json, the device named inside) and the tables printed. The JSON is
rewritten after every part and every layer row ("finished": false until the last), so a run cut off by a time limit
keeps what finished; the layer part stops timing rows after --layer-budget-s (240 s on CUDA), noted under
"stopped", so that the train part still runs. A part that raises is recorded under "errors" with its traceback
(printed too) and the other parts still run; the exit code is then 1, as it is when a correctness check fails.
--device cpu --quick runs every part at small sizes in a few minutes (a test does), so the script is known to work
before an accelerator sees it. On the GPU machine: see README "Performance" for the command and what travels.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Callable

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
    for check, key in (("no host sync", "host_syncs"), ("host syncs (fp16, informational)", "host_syncs_fp16")):
        for row in units.get(key, []):
            found = ", ".join(f"{k} x{v}" for k, v in row["syncs"].items()) or "none"
            if row["cuda_sync_debug_error"]:
                found += f"; CUDA: {row['cuda_sync_debug_error']}"
            case = f"{row['estimator']} k={row['k']} {row['dtype']} capacity {row['capacity_factor']}"
            table.add_row(check, case, found, "", _ok(row["ok"]) if key == "host_syncs" else "")
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


def usage_error(message: str) -> None:
    print(f"gpu-check: {message}", file=sys.stderr)
    raise SystemExit(2)


def run(args: argparse.Namespace) -> dict:
    console = Console(width=200)
    for name in ("fairseq", "hydra"):  # the in-process Trainer's INFO lines would bury the tables
        logging.getLogger(name).setLevel(logging.WARNING)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        usage_error("--device cuda but torch sees no CUDA device (use --device cpu for the CPU run)")
    parts = [p.strip() for p in args.parts.split(",")]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        usage_error(f"--parts {','.join(unknown)} unknown; choose from {','.join(PARTS)}")
    if args.layer_budget_s is not None and not args.layer_budget_s >= 0:  # NaN too
        usage_error(f"--layer-budget-s {args.layer_budget_s:g}: expected a number of seconds >= 0 (0: no budget)")
    doc: dict = {"benchmark": "gpu_check", "command": command_line(), "quick": args.quick, **device_info(device),
                 "parts": {}, "seconds": {}}
    cuda = device.type == "cuda"
    small = args.quick and not cuda
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="smx-gpu-check-"))
    path = Path(args.json) if args.json else RESULTS_DIR / f"gpu_check_{device.type}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    for part in parts:
        begin = time.monotonic()
        console.print(f"[bold]gpu-check: {part}[/] on {doc['device_name']}")
        try:
            run_part(part, device, args, small, work, doc, console,
                     save=lambda: write(path, doc, finished=False))
        except Exception:  # noqa: BLE001 - one shot on a lent machine: record it, run the other parts, exit 1
            trace = traceback.format_exc()
            doc["parts"].setdefault(part, {})
            doc["errors"] = {**doc.get("errors", {}), part: trace}
            console.print(f"[red]gpu-check: {part} failed[/] (recorded in the JSON; the other parts go on)")
            console.print(trace, markup=False, highlight=False)
        doc["seconds"][part] = round(time.monotonic() - begin, 1)
        write(path, doc, finished=False)  # after every part: a run cut off by a time limit keeps what finished
    doc["ok"] = check_ok(doc)
    write(path, doc, finished=True)
    console.print(f"[bold]gpu-check {'passed' if doc['ok'] else 'FAILED'}[/]: correctness checks "
                  f"{'all ok' if doc['ok'] else 'not all ok'}; speed targets are reported, not enforced; wrote {path}")
    if not doc["ok"]:
        raise SystemExit(1)
    return doc


def run_part(part: str, device: torch.device, args: argparse.Namespace, small: bool, work: Path, doc: dict,
             console: Console, save: Callable[[], None]) -> None:
    """One part into doc["parts"][part]; the layer rows land one by one and `save` writes the JSON after each (those
    timed before a failure or a kill stay)."""
    if part == "units":
        doc["parts"]["units"] = units = gpu_units.run(device)
        print_units(console, units)
    elif part == "layer":
        rows = doc["parts"]["layer"] = []
        budget = args.layer_budget_s if args.layer_budget_s is not None else (240.0 if device.type == "cuda" else 0)
        begin = time.monotonic()
        try:
            for row in gpu_layer.rows(device, torch.bfloat16, tokens=512 if small else 16384, d=64 if small else 1024,
                                      d_ff=128 if small else 4096, experts=[8, 64] if small else [8, 16, 64],
                                      ks=[1, 2], estimator_experts=8 if small else 16, repeats=3 if small else 15,
                                      warmup=1 if small else 3, inner=1 if small else 5):
                rows.append(asdict(row))
                save()
                if budget and time.monotonic() - begin > budget:
                    doc["stopped"] = {**doc.get("stopped", {}), "layer": f"after {len(rows)} rows: the layer "
                                      f"budget of {budget:g} s was spent (--layer-budget-s)"}
                    console.print(f"[yellow]gpu-check: layer stopped {doc['stopped']['layer']}[/]")
                    break
        finally:
            print_rows(console, "MoE layer forward + backward (bf16)", rows)
    else:
        train = doc["parts"]["train"] = {}
        timing = {"repeats": 3 if small else 20, "warmup": 1 if small else 5}
        train["throughput"] = asdict(gpu_train.throughput(device, Path(args.data_root), args.quick, **timing))
        if device.type == "cuda" and gpu_train.precision(device) == "bf16":  # what fp16 (the reference recipes') costs
            train["throughput_fp16"] = asdict(gpu_train.throughput(device, Path(args.data_root), args.quick, **timing,
                                                                   dtype="fp16"))
        print_rows(console, "training tokens/s", [train[k] for k in ("throughput", "throughput_fp16") if k in train])
        engine = train["engine"] = gpu_train.engine_run(device, Path(args.data_root), work, args.quick)
        console.print(f"engine: {engine.get('updates')} updates in {engine.get('train_wall_s')} s, median wps "
                      f"{engine.get('median_wps')}, BLEU {engine.get('bleu')}, rc train {engine.get('train_rc')}"
                      f" eval {engine.get('eval_rc')}")
        for key in ("train_error", "eval_error"):
            if key in engine:
                console.print(f"[red]{key}[/]:")
                console.print(engine[key], markup=False, highlight=False)


def write(path: Path, doc: dict, finished: bool) -> None:
    """The JSON as it stands (written whole to a temporary file, then renamed: never half a file)."""
    doc["finished"] = finished
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp.replace(path)


def check_ok(doc: dict) -> bool:
    """Correctness: no part raised, every unit check passed, and the engine run trained and evaluated (speed targets
    are reported)."""
    if doc.get("errors"):
        return False
    units = doc["parts"].get("units", {"ok": True})
    engine = doc["parts"].get("train", {}).get("engine", {"train_rc": 0, "eval_rc": 0})
    return bool(units["ok"]) and engine.get("train_rc") == 0 and engine.get("eval_rc") == 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--work", default=None, help="directory for the training run (default: a new temp dir)")
    parser.add_argument("--data-root", default="data", help="where synthetic-mt is (prepared on first use)")
    parser.add_argument("--layer-budget-s", type=float, default=None, metavar="SECONDS",
                        help="stop timing layer rows once the layer part has run this long, so that the train part "
                             "still runs inside a lent machine's time limit (default: 240 on CUDA, 0 = none on the "
                             "CPU)")


def quick(args: argparse.Namespace) -> None:
    """--quick: small sizes on the CPU (the test suite's run); on CUDA the full sizes still run."""
