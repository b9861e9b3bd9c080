"""The ONE way smx starts an engine process (fairseq training, generation, LM evaluation, checkpoint averaging):
the command (`python -P -m smx.engine.entry MODULE ARGS`, under torchrun for several processes), its environment,
and the helpers that follow and stop it. fairseq is never imported here.

- `-P`: the working directory is not put on sys.path, so a local directory named smx/ or fairseq/ cannot shadow the
  installed packages in the engine; smx.engine.entry runs MODULE and exits cleanly (exit status kept).
- The engine dies with smx: on Linux it gets SIGKILL when smx dies (PR_SET_PDEATHSIG, smx.engine.children).
- `run_captured` runs a short engine job (eval, averaging) with its output in a log file and a progress bar;
  smx.run.session runs training (output straight into train.log, followed with `follow`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from rich.console import Console
from rich.progress import Progress

from smx.engine import checksums
from smx.engine import contract
from smx.engine.children import die_with_parent
from smx.errors import UserError

ENTRY = "smx.engine.entry"


@dataclass(frozen=True)
class Distributed:
    """torchrun-style scale-out. world_size = nproc_per_node * nnodes; 1 = a plain single process."""

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None  # None: a free port (single node) / 29500 (several nodes)

    def __post_init__(self) -> None:
        if self.nproc_per_node < 1:
            raise UserError(f"--nproc-per-node {self.nproc_per_node}: must be >= 1")
        if self.nnodes < 1:
            raise UserError(f"--nnodes {self.nnodes}: must be >= 1")
        if not 0 <= self.node_rank < self.nnodes:
            raise UserError(f"--node-rank {self.node_rank}: must be in [0, --nnodes={self.nnodes})")
        if self.master_port is not None and not 0 < self.master_port < 65536:
            raise UserError(f"--master-port {self.master_port}: not a port number")

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_command(module: str, args: Sequence[str], dist: Distributed = Distributed(),
                   python: str = sys.executable) -> list[str]:
    """`python -P -m smx.engine.entry MODULE ARGS`, under torchrun on every rank when more than one process
    (smx.engine.entry: rank arguments, parent watch, clean exit)."""
    entry = ["-m", ENTRY, module, *args]
    if dist.world_size == 1:
        return [python, "-P", *entry]
    port = dist.master_port or (_free_port() if dist.nnodes == 1 else 29500)
    return [python, "-P", "-m", "torch.distributed.run", "--nproc-per-node", str(dist.nproc_per_node),
            "--nnodes", str(dist.nnodes), "--node-rank", str(dist.node_rank), "--master-addr", dist.master_addr,
            "--master-port", str(port), *entry]


def train_env_additions(cpu_threads: int, device: str) -> dict[str, str]:
    """Environment variables smx sets for a TRAINING engine (recorded in meta.json): the switches of
    smx.fairseq_plugin.guards (record every checkpoint's sha256 when it is saved; save and stop on the first SIGINT,
    every rank after the same update) and, on CPU, train.cpu_threads threads per process (default 1: small models
    gain little from more, and an oversubscribed machine slows down many times with them)."""
    env = {**contract.engine_env(), "PYTHONUNBUFFERED": "1", checksums.RECORD_ENV: "1",
           contract.GRACEFUL_STOP_ENV: "1"}
    if device == "cpu" and cpu_threads > 0:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(cpu_threads)
    return env


def engine_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ + the plugin's engine environment (smx.engine.contract) + `extra`."""
    return {**os.environ, **contract.engine_env(), **(extra or {})}


def verify_env(digests: dict) -> dict[str, str]:
    """Environment asking the engine to check these sha256s right before unpickling (empty: nothing to check)."""
    return {checksums.VERIFY_ENV: checksums.verify_env_value(digests)} if digests else {}


def resolve_device(requested: str) -> str:
    """auto -> cuda when available else cpu; cuda without a GPU is a UserError."""
    if requested == "cpu":
        return "cpu"
    import torch

    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise UserError("train.device: cuda requested but no GPU is visible (use --device cpu or auto)")
    return "cuda" if has_cuda else "cpu"


def check_engine() -> None:
    import importlib.util

    if importlib.util.find_spec("fairseq_cli") is None:
        raise UserError("the fairseq engine is not installed: pip install 'smx[engine]' (fairseq-fixed)")


# ---------------------------------------------------------------- following and stopping


def follow(path: Path, offset: int, proc: subprocess.Popen, poll: float = 0.05):
    """Yield the complete lines appended to `path` after byte `offset` until `proc` has exited and all is read."""
    with open(path, "rb") as f:
        f.seek(offset)
        pending = b""
        while True:
            chunk = f.readline()
            if chunk:
                pending += chunk
                if pending.endswith(b"\n"):
                    yield pending.decode("utf-8", errors="replace")
                    pending = b""
                continue
            if proc.poll() is not None:
                rest = f.read()
                if rest:
                    pending += rest
                    continue
                if pending:
                    yield pending.decode("utf-8", errors="replace")
                return
            time.sleep(poll)


def run_captured(cmd: list[str], log: Path, label: str, *, total: int | None = None, count_prefix: str = "H-",
                 extra_env: dict[str, str] | None = None) -> str:
    """Run a short engine job, its stdout and stderr into `log`, a progress bar counting stdout lines that start
    with count_prefix; returns stdout followed by stderr. A failure raises UserError (last output line, log path)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, encoding="utf-8", errors="replace",
                            env=engine_environment({"LOGLEVEL": "INFO", **(extra_env or {})}),
                            preexec_fn=die_with_parent())
    err: list[str] = []
    drain = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
    drain.start()
    out: list[str] = []
    tmp = log.with_name(log.name + ".tmp")  # the previous log stays whole until this one is (disk full, a kill)
    try:
        with Progress(console=Console(stderr=True), transient=True) as bar, open(tmp, "w", encoding="utf-8") as f:
            f.write(" ".join(cmd) + "\n")
            task = bar.add_task(label, total=total)
            for line in proc.stdout:
                out.append(line)
                f.write(line)
                if line.startswith(count_prefix):
                    bar.advance(task)
            proc.wait()
            drain.join()
            f.write("".join(err))
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, log)
    if proc.returncode != 0:
        last = next((x.strip() for x in reversed(err + out) if x.strip()), "no output")
        raise UserError(f"{label} failed (exit {proc.returncode}): {last[:300]} (full log: {log})")
    return "".join(out) + "".join(err)  # results on stdout; logging may go to either stream
