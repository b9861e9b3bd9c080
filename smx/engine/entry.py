"""Entry point of every engine process: `python -P -m smx.engine.entry fairseq_cli.MODULE ARGS...` (one process), or
the same module under torchrun (`python -m torch.distributed.run ... -m smx.engine.entry fairseq_cli.train ARGS`).

It runs the fairseq command-line module unchanged (by module name: fairseq is imported by the engine, not here) and
adds three things:
- Under torchrun, fairseq 0.12 infers its rank from the environment only on GPU machines (it divides by the CUDA
  device count), so on CPU (gloo) every process would claim rank 0: RANK / LOCAL_RANK become fairseq's own
  distributed arguments.
- The process watches its parent: when the parent is gone (smx and the torchrun agent were killed with SIGKILL,
  say), it kills itself instead of training on as an orphan.
- A clean exit. When training stops in the middle of an epoch (max_update, a Ctrl-C save, stop_time_hours), fairseq's
  prefetching thread (a daemon BufferedIterator consumer) may still be collating a batch inside torch's C++ code;
  CPython's finalization then ends that thread with pthread_exit and C++ aborts ("terminate called without an
  active exception", exit -6) after everything was saved. So once the module returns, this entry joins the
  non-daemon threads, runs the atexit handlers (logging, TensorBoard writers), flushes and leaves with os._exit,
  keeping the module's exit code.
"""

from __future__ import annotations

import atexit
import os
import runpy
import signal
import sys
import threading
import time
import traceback

_TORCHRUN_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def distributed_args(environ: dict[str, str]) -> list[str]:
    """fairseq's explicit distributed arguments for this torchrun worker (pure)."""
    missing = [k for k in _TORCHRUN_KEYS if k not in environ]
    if missing:
        raise SystemExit(f"smx.engine.entry must run under torchrun (missing {', '.join(missing)})")
    return ["--distributed-init-method", "env://", "--distributed-rank", environ["RANK"],
            "--device-id", environ["LOCAL_RANK"], "--distributed-world-size", environ["WORLD_SIZE"],
            "--distributed-no-spawn"]


def under_torchrun(environ: dict[str, str]) -> bool:
    return any(k in environ for k in _TORCHRUN_KEYS)


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


def exit_status(code: object) -> int:
    """The process exit status of `sys.exit(code)` (None: 0; an int: itself; anything else is printed: 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def run_module(module: str, argv: list[str]) -> int:
    """Run `module` as __main__ with `argv`; its exit status (a traceback is printed for an uncaught exception)."""
    sys.argv = [module.rsplit(".", 1)[-1], *argv]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return exit_status(e.code)
    except KeyboardInterrupt:  # a second Ctrl-C: the first one already asked for a graceful stop
        traceback.print_exc()
        return 128 + signal.SIGINT
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def clean_exit(status: int) -> None:
    """Leave like a normal interpreter exit, minus the finalization that kills daemon threads (see the docstring)."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m smx.engine.entry MODULE [ARGS...]  (MODULE: fairseq_cli.train, ...)")
    module, argv = sys.argv[1], sys.argv[2:]
    watch_parent()
    if under_torchrun(dict(os.environ)):
        argv = [*argv, *distributed_args(dict(os.environ))]
    clean_exit(run_module(module, argv))


if __name__ == "__main__":
    main()
