"""Entry point of every engine process under torchrun: `python -m torch.distributed.run ... -m smx.engine_entry ARGS`.

fairseq 0.12 infers its rank from torchrun's environment only on GPU machines (it divides by the CUDA device count),
so on CPU (gloo) every process would claim rank 0. This shim turns torchrun's RANK / LOCAL_RANK into fairseq's own
distributed arguments, then runs fairseq_cli.train unchanged (by module name: fairseq is imported by the engine,
not here).

Each worker also watches its parent (the torchrun agent): when the agent is gone (smx and the agent were killed with
SIGKILL, say), the worker kills itself instead of training on as an orphan.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
import time


def distributed_args(environ: dict[str, str]) -> list[str]:
    """fairseq's explicit distributed arguments for this torchrun worker (pure)."""
    missing = [k for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in environ]
    if missing:
        raise SystemExit(f"smx.engine_entry must run under torchrun (missing {', '.join(missing)})")
    return ["--distributed-init-method", "env://", "--distributed-rank", environ["RANK"],
            "--device-id", environ["LOCAL_RANK"], "--distributed-world-size", environ["WORLD_SIZE"],
            "--distributed-no-spawn"]


def watch_parent(interval: float = 1.0) -> threading.Thread:
    """A daemon thread that SIGKILLs this process once its parent process has gone (it was re-parented)."""
    parent = os.getppid()

    def loop() -> None:
        while True:
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(interval)

    thread = threading.Thread(target=loop, name="smx-parent-watch", daemon=True)
    thread.start()
    return thread


def main() -> None:
    watch_parent()
    sys.argv = ["fairseq-train", *sys.argv[1:], *distributed_args(dict(os.environ))]
    runpy.run_module("fairseq_cli.train", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
