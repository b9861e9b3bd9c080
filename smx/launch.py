"""Recipe + run directory -> the fairseq engine command (a pure function, golden-tested), then run it.

    argv = fairseq_argv(recipe, run_dir, data_dir, resume=False, device="cpu")    # pure
    status = train(recipe, run, data_dir, resume=False, device="cpu")              # runs fairseq_cli.train

The engine runs as a subprocess (`python -m smx.engine_entry fairseq_cli.train`, under torchrun when more than
one process), with the plugin's engine environment (smx.fairseq_plugin.env). Its output goes to train.log and is
parsed into metrics.jsonl (smx.metrics); a rich progress bar follows it (smx.progress). The engine records every
checkpoint's sha256 in checkpoints/SHA256SUMS as it saves it. SIGINT/SIGTERM make the engine save and stop; meta.json
then says done, failed or interrupted (smx.engine_run). fairseq is never imported here.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smx.errors import UserError
from smx.fairseq_plugin import checksums
from smx.fairseq_plugin import env as engine
from smx.recipes import Recipe
from smx.rundir import RunDir


def _num(value: float | int) -> str:
    """Numbers as fairseq reads them back exactly: 7e-4 -> '0.0007', 1e-7 -> '1e-07', 4.0 -> '4.0'."""
    return repr(value) if isinstance(value, float) else str(value)


def _layers(indices: tuple[int, ...]) -> str:
    return ",".join(str(i) for i in indices)


def fairseq_argv(recipe: Recipe, run_dir: str | Path, data_dir: str | Path, resume: bool, device: str,
                 world_size: int = 1) -> list[str]:
    """The fairseq_cli.train arguments for `recipe` (no interpreter/module prefix). Pure: same input, same list.

    device: "cpu" or "cuda" (already resolved). world_size: total engine processes (> 1: distributed training).
    """
    assert device in ("cpu", "cuda"), device
    tr = recipe.task == "translation"
    m, moe, o, t, d = recipe.model, recipe.moe, recipe.optim, recipe.train, recipe.data
    run_dir = Path(run_dir)
    # The data directory twice ("D:D"): fairseq then treats the data as sharded and rebuilds the batches of every
    # epoch from seed + epoch. With a single "D" it builds them once, from the epoch it starts at, so a run resumed
    # in epoch E would see batches of a different composition than an uninterrupted one (not reproducible).
    a: list[str] = [f"{data_dir}{os.pathsep}{data_dir}", "--task", recipe.task]
    if tr:
        if d.source_lang:
            a += ["--source-lang", d.source_lang]
        if d.target_lang:
            a += ["--target-lang", d.target_lang]
    else:
        a += ["--tokens-per-sample", str(d.tokens_per_sample), "--sample-break-mode", d.sample_break_mode]
    model = engine.TRANSLATION_MODEL if tr else engine.LM_MODEL
    a += ["--arch", f"{model}_{m.arch}", "--user-dir", str(engine.user_dir())]
    if m.share_all_embeddings:
        a += ["--share-all-embeddings"] if tr else ["--share-decoder-input-output-embed"]
    a += ["--dropout", _num(m.dropout), "--attention-dropout", _num(m.attention_dropout),
          "--activation-dropout", _num(m.activation_dropout), "--activation-fn", m.activation_fn]
    sides = ("encoder", "decoder") if tr else ("decoder",)
    for key, flag in (("embed_dim", "embed-dim"), ("ffn_dim", "ffn-embed-dim"), ("attention_heads", "attention-heads")):
        if getattr(m, key) is not None:
            for side in sides:
                a += [f"--{side}-{flag}", str(getattr(m, key))]
    for side in sides:
        if getattr(m, f"{side}_layers") is not None:
            a += [f"--{side}-layers", str(getattr(m, f"{side}_layers"))]

    a += ["--moe-num-experts", str(moe.num_experts), "--moe-k", str(moe.k),
          "--moe-estimator", recipe.router.estimator,
          "--moe-estimator-options", json.dumps(recipe.router.options, sort_keys=True)]
    if tr:
        a += ["--moe-encoder-layers", _layers(moe.encoder_layers)]
    a += ["--moe-decoder-layers", _layers(moe.decoder_layers)]
    if moe.capacity_factor is not None:
        a += ["--moe-capacity-factor", _num(moe.capacity_factor)]
    if moe.eval_capacity_factor is not None:
        a += ["--moe-eval-capacity-factor", _num(moe.eval_capacity_factor)]
    a += ["--moe-drop-policy", moe.drop_policy]
    a += ["--moe-output-scale"] if moe.output_scale else []
    a += ["--moe-router-bias"] if moe.router_bias else []
    a += ["--moe-input-jitter", _num(moe.input_jitter), "--moe-balance-source", moe.balance_source]

    a += ["--criterion", engine.TRANSLATION_CRITERION if tr else engine.LM_CRITERION]
    if tr:
        a += ["--label-smoothing", _num(t.label_smoothing)]
    a += ["--moe-balance-weight", _num(moe.balance_weight), "--moe-balance-reduction", moe.balance_reduction,
          "--moe-zloss-weight", _num(moe.zloss_weight)]

    a += ["--optimizer", o.optimizer, "--adam-betas", f"({_num(o.betas[0])}, {_num(o.betas[1])})",
          "--adam-eps", _num(o.adam_eps), "--weight-decay", _num(o.weight_decay), "--clip-norm", _num(o.clip_norm),
          "--lr", _num(o.lr), "--lr-scheduler", o.scheduler, "--warmup-updates", str(o.warmup_updates)]
    if o.scheduler == "inverse_sqrt":
        a += ["--warmup-init-lr", _num(o.warmup_init_lr)]

    a += ["--max-tokens", str(t.max_tokens)]
    if t.batch_size is not None:
        a += ["--batch-size", str(t.batch_size)]
    a += ["--update-freq", str(t.update_freq), "--max-update", str(t.max_update), "--max-epoch", str(t.max_epoch),
          "--num-workers", str(t.num_workers), "--skip-invalid-size-inputs-valid-test", "--seed", str(recipe.seed)]

    ckpt = run_dir / "checkpoints"
    a += ["--save-dir", str(ckpt), "--no-epoch-checkpoints", "--keep-interval-updates", str(t.keep_last),
          "--save-interval-updates", str(t.save_interval_updates),
          "--best-checkpoint-metric", t.best_checkpoint_metric,
          "--validate-interval", str(t.validate_interval),
          "--validate-interval-updates", str(t.validate_interval_updates)]
    if resume:
        a += ["--restore-file", str(ckpt / "checkpoint_last.pt")]
    a += ["--log-format", "json", "--log-interval", str(t.log_interval), "--tensorboard-logdir", str(run_dir / "tb")]

    if device == "cpu":
        a += ["--cpu"]
    elif t.fp16 in (True, "auto"):
        a += ["--fp16"]
        if t.fp16_init_scale is not None:
            a += ["--fp16-init-scale", str(t.fp16_init_scale)]
        if t.fp16_scale_window is not None:
            a += ["--fp16-scale-window", str(t.fp16_scale_window)]
    a += ["--ddp-backend", t.ddp_backend]
    if world_size > 1:
        a += ["--distributed-world-size", str(world_size)]
        if t.ddp_backend == "pytorch_ddp":  # an expert may get no token on a rank: its parameters get no gradient
            a += ["--find-unused-parameters"]
        if device == "cpu":
            a += ["--distributed-backend", "gloo"]
    return a


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


def engine_command(argv: list[str], dist: Distributed, python: str = sys.executable) -> list[str]:
    """The full command: `python -m smx.engine_entry fairseq_cli.train ...`, under torchrun on every rank when more
    than one process (smx.engine_entry: rank arguments, parent watch, clean exit)."""
    # -P: the working directory is not put on sys.path, so a local directory cannot shadow a module of the engine
    entry = ["-m", "smx.engine_entry", "fairseq_cli.train", *argv]
    if dist.world_size == 1:
        return [python, "-P", *entry]
    port = dist.master_port or (_free_port() if dist.nnodes == 1 else 29500)
    return [python, "-P", "-m", "torch.distributed.run", "--nproc-per-node", str(dist.nproc_per_node),
            "--nnodes", str(dist.nnodes), "--node-rank", str(dist.node_rank), "--master-addr", dist.master_addr,
            "--master-port", str(port), *entry]


def engine_env_additions(recipe: Recipe, device: str) -> dict[str, str]:
    """Environment variables smx sets for the engine (recorded in meta.json): the plugin's, CPU threads, and the
    switches of smx.fairseq_plugin.guards: record every checkpoint's sha256 when it is saved, and save a checkpoint
    and stop on the first SIGINT (every rank after the same update).

    On CPU, train.cpu_threads (default 1) threads per process: small models gain little from more, and an
    oversubscribed machine (other jobs, several engine processes) slows down many times with them.
    """
    env = {**engine.engine_env(), "PYTHONUNBUFFERED": "1", checksums.RECORD_ENV: "1", engine.GRACEFUL_STOP_ENV: "1"}
    if device == "cpu" and recipe.train.cpu_threads > 0:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(recipe.train.cpu_threads)
    return env


def engine_environment(recipe: Recipe, device: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **engine_env_additions(recipe, device), **(extra or {})}


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


# ---------------------------------------------------------------- running (smx.engine_run)


def train(recipe: Recipe, run: RunDir, data_dir: Path, *, resume: bool, device: str,
          dist: Distributed = Distributed(), console: Any = None, progress: bool = True,
          verified: dict[Path, str] | None = None) -> str:
    """Run the engine for `run`; returns done | failed | interrupted (see smx.engine_run.train)."""
    from smx.engine_run import train as run_engine

    return run_engine(recipe, run, data_dir, resume=resume, device=device, dist=dist, console=console,
                      progress=progress, verified=verified)


def train_worker(recipe: Recipe, run_path: Path, data_dir: Path, *, resume: bool, device: str,
                 dist: Distributed) -> str:
    """A node with --node-rank > 0 (see smx.engine_run.train_worker)."""
    from smx.engine_run import train_worker as run_worker

    return run_worker(recipe, run_path, data_dir, resume=resume, device=device, dist=dist)
