"""Peak resident memory of a command and everything it starts (Linux /proc; no extra dependency).

    python -m bench peak-rss [--json bench/results/peak_rss.json] [--interval 0.1] [--target-gb 4] -- make demo

Two numbers: the peak of the SUM of the RSS of the whole process tree (polled every --interval seconds: what the
machine must hold at once) and the largest single process (exact: the kernel's ru_maxrss over waited-for
descendants). The command's exit status is passed through.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import RESULTS_DIR, git_commit

PAGE = os.sysconf("SC_PAGE_SIZE")


def children_map() -> dict[int, list[int]]:
    """ppid -> [pid] over every process visible in /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # field 4; the command name may contain spaces
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_rss(root: int) -> int:
    """Sum of resident bytes of `root` and all its descendants (0 for processes that vanished meanwhile)."""
    tree, total, stack = children_map(), 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(tree.get(pid, []))
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            pass
    return total


def measure(cmd: list[str], interval: float) -> dict:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak, samples = 0, 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        samples += 1
        time.sleep(interval)
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    return {"command": cmd, "returncode": proc.returncode, "seconds": round(time.perf_counter() - start, 1),
            "peak_tree_rss_bytes": peak, "largest_process_rss_bytes": largest, "poll_interval_s": interval,
            "polls": samples}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench peak-rss", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "peak_rss.json")
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--target-gb", type=float, default=4.0)
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("give the command to measure after --")
    result = measure(cmd, args.interval)
    gb = 1024 ** 3
    peak = max(result["peak_tree_rss_bytes"], result["largest_process_rss_bytes"])
    result.update(git_commit())
    result.update({"peak_gb": round(peak / gb, 3), "target_gb": args.target_gb, "met": peak <= args.target_gb * gb})
    print(f"peak RSS of `{' '.join(cmd)}`: process tree {result['peak_tree_rss_bytes'] / gb:.2f} GB (polled every "
          f"{args.interval}s), largest single process {result['largest_process_rss_bytes'] / gb:.2f} GB; target <= "
          f"{args.target_gb} GB: {'met' if result['met'] else 'NOT met'} (exit {result['returncode']}, "
          f"{result['seconds']} s)", file=sys.stderr)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result["returncode"]
