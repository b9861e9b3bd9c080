"""`smx train RECIPE [--set a.b=v] [--estimator NAME] [--seed N] [--runs-root DIR | --run-dir DIR] [--resume RUN]
[--nproc-per-node N --nnodes N --node-rank R --master-addr A --master-port P] [--device auto|cpu|cuda]
[--trust-checkpoint]`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console

from smx.engine.process import Distributed
from smx.run.train import TrainRequest, run
EXIT = {"done": 0, "failed": 1, "interrupted": 130}


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def train(
    ctx: typer.Context,
    recipe: Optional[Path] = typer.Argument(None, help="recipe YAML (optional with --resume)"),
    set_: List[str] = typer.Option([], "--set", help="override KEY=VALUE (repeatable), e.g. --set optim.lr=1e-4"),
    estimator: Optional[str] = typer.Option(
        None, "--estimator", help="router estimator; recipe options it does not take are dropped (with a note)"
    ),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed (same as --set seed=N)"),
    runs_root: Path = typer.Option(Path("runs"), "--runs-root", help="runs go to DIR/<name>-<estimator>-s<seed>"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="exact run directory (must not exist)"),
    resume: Optional[Path] = typer.Option(None, "--resume", help="continue RUN from checkpoints/checkpoint_last.pt"),
    nproc_per_node: int = typer.Option(1, "--nproc-per-node", help="engine processes on this node (torchrun)"),
    nnodes: int = typer.Option(1, "--nnodes", help="number of nodes"),
    node_rank: int = typer.Option(0, "--node-rank", help="this node's rank (0 keeps the run directory)"),
    master_addr: str = typer.Option("127.0.0.1", "--master-addr", help="address of the node-rank-0 machine"),
    master_port: Optional[int] = typer.Option(None, "--master-port", help="rendezvous port (default: a free one)"),
    device: Optional[Device] = typer.Option(None, "--device", help="overrides train.device", case_sensitive=False),
    no_progress: bool = typer.Option(False, "--no-progress", help="no progress bar"),
    stop_after_minutes: Optional[float] = typer.Option(
        None, "--stop-after-minutes",
        help="this invocation's wall budget: after N minutes save checkpoint_last.pt after the current update and "
             "stop (status interrupted; --resume continues), e.g. before a scheduler's time limit"),
    trust_checkpoint: bool = typer.Option(
        False, "--trust-checkpoint",
        help="--resume even from a checkpoint whose sha256 is not the one recorded when smx saved it (checkpoints "
             "are pickles: loading one runs code)"),
) -> int:
    """Train a Switch Transformer MoE per RECIPE into a new run directory (or resume one)."""
    argv = ctx.obj["argv"] if isinstance(ctx.obj, dict) else ["smx", "train"]  # as typed (smx.cli.run)
    dist = Distributed(nproc_per_node, nnodes, node_rank, master_addr, master_port)
    req = TrainRequest(
        recipe_path=recipe, overrides=tuple(set_), estimator=estimator, seed=seed, runs_root=runs_root,
        run_dir=run_dir, resume=resume, device=device.value if device else None, dist=dist,
        progress=not no_progress, argv=tuple(argv), trust_checkpoint=trust_checkpoint,
        stop_after_minutes=stop_after_minutes,
    )
    status = run(req, console=Console(stderr=True, soft_wrap=True))
    code = EXIT[status]
    if code:
        raise typer.Exit(code=code)
    return 0


def register(app: typer.Typer) -> None:
    """Add `smx train` to the smx app."""
    app.command(name="train")(train)
