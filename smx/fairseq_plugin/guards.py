"""Engine-side safety: checkpoint hashes at save time, hash checks before unpickling, a non-finite loss guard,
and a graceful stop on SIGINT. Installed once per engine process by smx.fairseq_plugin.register (install()).

- Saving (when $SMX_RECORD_CHECKPOINT_SHA256=1, set by `smx train`): fairseq writes every checkpoint through
  checkpoint_utils.torch_persistent_save (the first file of a save) and PathManager.copy (checkpoint_best.pt,
  checkpoint_last.pt). Both are replaced by: write `<name>.tmp`, fsync, hash, record the hash (next to the previous
  one), rename into place, record it as the only one (smx.engine.checksums). A kill -9 at any instant leaves
  no checkpoint without a recorded hash, and no half-written file under a checkpoint's name (fairseq's own copy is
  not atomic). After each save the lines of removed interval checkpoints are dropped.
- Loading: checkpoint_utils.load_checkpoint_to_cpu first checks the file against $SMX_VERIFY_CHECKPOINT_SHA256
  (set by smx after it verified the file against SHA256SUMS), right before torch.load unpickles it.
- Non-finite loss: every criterion forward calls checked_loss(); a NaN/inf loss logs one `SMX_NONFINITE {json}` line
  (update, split, value) and raises NonFiniteLoss (a RuntimeError, so fairseq re-raises it without writing a
  crash.pt of the broken model) before any backward or optimizer step. fairseq's own FloatingPointError (non-finite
  gradients, "Minimum loss scale reached") is reported the same way with the update it happened in.
  $SMX_TEST_NONFINITE_AT=N (tests only) makes the training loss of update N NaN.
- SIGINT, SIGTERM, SIGHUP (when $SMX_GRACEFUL_STOP=1, set by `smx train`): the first one only sets a flag; after
  the current update the trainer's stop_time_hours is set so that fairseq's own loop saves checkpoint_last.pt
  (validation skipped) and stops cleanly. With several processes (torchrun) the flags are combined after every
  update (an all-reduce of one number), so every rank stops after the same update even when the signal reached only
  some of them. Signals within SAME_REQUEST_S of the first are the same request (a scheduler signals every process
  of the job, and smx forwards the one it got); a later one interrupts at once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import torch
from fairseq import checkpoint_utils
from fairseq.distributed import utils as distributed_utils
from fairseq.file_io import PathManager
from fairseq.trainer import Trainer

from smx.engine import checksums
from smx.engine.contract import GRACEFUL_STOP_ENV, NONFINITE_TEST_ENV, SAME_REQUEST_S, STOP_SIGNALS

logger = logging.getLogger(__name__)

MARKER = "SMX_NONFINITE"


class NonFiniteLoss(RuntimeError):
    """A NaN or infinite loss: training stops before the update is applied."""


def _report(update, split: str, what: str, value: str) -> None:
    logger.error("%s %s", MARKER, json.dumps({"update": update, "split": split, "what": what, "value": value}))


def checked_loss(criterion, loss: torch.Tensor) -> torch.Tensor:
    """`loss` unchanged when finite; otherwise report and raise NonFiniteLoss (called by the smx criteria)."""
    if getattr(criterion, "smx_poison", False):
        loss = loss * float("nan")
    if bool(torch.isfinite(loss.detach()).all()):
        return loss
    split = "train" if criterion.training else "valid"
    update = getattr(criterion, "smx_update", None)
    value = "nan" if bool(torch.isnan(loss.detach()).any()) else "inf"
    _report(update, split, "loss", value)
    where = "training" if split == "train" else "validation after"
    raise NonFiniteLoss(f"non-finite loss ({value}) in {where} update {update}")


# ------------------------------------------------------------------------------------------------ checkpoint files
def _atomic_recorded(path: Path, write) -> None:
    """write(tmp) then fsync, hash, record, rename into place, record as final."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    digest = checksums.sha256_file(tmp)
    checksums.record_pending(path.parent, path.name, digest)
    os.replace(tmp, path)
    checksums.fsync_dir(path.parent)
    checksums.record_final(path.parent, path.name, digest)


def _install_recording() -> None:
    original_save = checkpoint_utils.torch_persistent_save
    original_copy = PathManager.copy
    original_save_checkpoint = checkpoint_utils.save_checkpoint

    def torch_persistent_save(obj, filename, async_write: bool = False):
        if async_write or not str(filename).endswith(".pt"):
            return original_save(obj, filename, async_write)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                checkpoint_utils._torch_persistent_save(obj, f)

        _atomic_recorded(Path(filename), write)

    def copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        if not str(dst_path).endswith(".pt"):
            return original_copy(src_path, dst_path, overwrite)
        _atomic_recorded(Path(dst_path), lambda tmp: shutil.copyfile(src_path, tmp))
        return True

    def save_checkpoint(cfg, trainer, epoch_itr, val_loss):
        out = original_save_checkpoint(cfg, trainer, epoch_itr, val_loss)
        if trainer.should_save_checkpoint_on_current_rank and os.path.isdir(cfg.save_dir):
            checksums.prune(cfg.save_dir)
        return out

    checkpoint_utils.torch_persistent_save = torch_persistent_save
    checkpoint_utils.save_checkpoint = save_checkpoint
    PathManager.copy = staticmethod(copy)


def _install_verification() -> None:
    original_load = checkpoint_utils.load_checkpoint_to_cpu

    def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
        checksums.verify_expected(path)
        return original_load(path, arg_overrides, load_on_all_ranks)

    checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu


# ------------------------------------------------------------------------------------------------- trainer hooks
class _Stop:
    """Stop-request flag of this engine process (the first of SIGINT / SIGTERM / SIGHUP names it)."""

    def __init__(self) -> None:
        self.requested = False
        self.applied = False
        self.signal_name = ""
        self.first_at = 0.0

    def handler(self, signum, frame) -> None:
        now = time.monotonic()
        if not self.requested:
            self.requested, self.first_at, self.signal_name = True, now, signal.Signals(signum).name
        elif now - self.first_at > SAME_REQUEST_S:  # a second, separate request: interrupt at once
            raise KeyboardInterrupt


def _apply_stop(trainer, stop: _Stop) -> None:
    from omegaconf import open_dict

    stop.applied = True
    logger.info("smx: %s received: saving checkpoint_last.pt after update %d and stopping",
                stop.signal_name or "SIGINT", trainer.get_num_updates())
    with open_dict(trainer.cfg):
        trainer.cfg.optimization.stop_time_hours = 1e-12  # fairseq's own stop: save, then leave the loop
        trainer.cfg.dataset.disable_validation = True


def _stop_requested(trainer, stop: _Stop) -> bool:
    """This rank's flag, or (several ranks) whether any rank's flag is set: every rank calls this after every update,
    so the all-reduce lines up across ranks and they all stop after the same update."""
    if trainer.data_parallel_world_size <= 1:
        return stop.requested
    flag = torch.tensor([1.0 if stop.requested else 0.0], device=trainer.device)
    distributed_utils.all_reduce(flag, group=trainer.data_parallel_process_group)
    return bool(flag.item() > 0)


def _install_trainer_hooks(stop: _Stop | None, inject_at: int | None) -> None:
    original_train_step = Trainer.train_step
    original_valid_step = Trainer.valid_step

    def train_step(self, samples, raise_oom=False):
        criterion = self._criterion
        update = self.get_num_updates() + 1
        criterion.smx_update = update
        criterion.smx_poison = inject_at is not None and update == inject_at
        try:
            out = original_train_step(self, samples, raise_oom)
        except FloatingPointError as e:
            _report(update, "train", "gradients", (str(e).strip().splitlines() or ["FloatingPointError"])[0])
            raise
        finally:
            criterion.smx_poison = False
        if stop is not None and not stop.applied and _stop_requested(self, stop):
            _apply_stop(self, stop)
        return out

    def valid_step(self, sample, raise_oom=False):
        self._criterion.smx_update = self.get_num_updates()
        return original_valid_step(self, sample, raise_oom)

    Trainer.train_step = train_step
    Trainer.valid_step = valid_step


def install(environ: dict[str, str] | None = None) -> None:
    """Install the hooks the environment asks for (idempotent: once per process)."""
    if getattr(checkpoint_utils, "_smx_guards_installed", False):
        return
    checkpoint_utils._smx_guards_installed = True
    env = os.environ if environ is None else environ
    if env.get(checksums.RECORD_ENV) == "1":
        _install_recording()
    _install_verification()
    stop = None
    if env.get(GRACEFUL_STOP_ENV) == "1" and threading.current_thread() is threading.main_thread():
        stop = _Stop()
        for sig in STOP_SIGNALS:
            signal.signal(sig, stop.handler)
    inject = env.get(NONFINITE_TEST_ENV, "")
    _install_trainer_hooks(stop, int(inject) if inject.strip().isdigit() else None)
