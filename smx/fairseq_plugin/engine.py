"""The fairseq-side half of the engine quirks (the launcher half, fairseq-free, is smx/fairseq_plugin/env.py).

- torch >= 2.6 weights_only: fairseq's checkpoint_utils calls torch.load without weights_only, which now defaults to
  True and cannot unpickle fairseq checkpoints (argparse.Namespace / omegaconf configs, meters). smx runs the engine
  with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 (env.ENGINE_ENV); warn_if_weights_only_load() says so at plugin import
  when the variable is missing, before a resume or a generate run fails deep inside torch.
- --required-batch-size-multiple: see env.EVAL_ARGS.
- MoE layers keep per-forward state that activation checkpointing (which re-runs the forward) would break, and
  --scale-fc puts a LayerNorm inside the FFN that an MoE layer replaces: refuse_unsupported() rejects those options
  with a one-line error. Layers are not FSDP-wrapped individually (fully_sharded wraps the whole model).
- --bf16 is TPU-only in fairseq 0.12: options.parse_args_and_arch sets args.tpu whenever args.bf16 (fairseq issue
  4696), and the Trainer then asks torch_xla for a device. Its bf16 path itself (the model and batches cast to
  bfloat16, FP16Optimizer with fp32 master weights and no loss scaler) is device-agnostic. bf16_keeps_tpu_off()
  turns tpu off again unless --tpu was given: in every fairseq_cli process through install_bf16_on_any_device() (at
  plugin import), in bench/fairseq_models.py's in-process Trainers directly. On GPUs bf16 is the precision of torch's
  grouped GEMM kernel (smx.moe.dispatch: fp16 takes a fallback that reads the offsets on the host).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from typing import Sequence

import torch

from smx.engine.contract import ENGINE_ENV

logger = logging.getLogger(__name__)


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def weights_only_load_is_default() -> bool:
    """True when this torch's torch.load defaults to weights_only=True (torch >= 2.6)."""
    return _torch_version() >= (2, 6)


def weights_only_env_ok(environ: dict[str, str] | None = None) -> bool:
    """True when fairseq checkpoints will load in this process."""
    environ = os.environ if environ is None else environ
    if not weights_only_load_is_default():
        return True
    return all(environ.get(k, "").lower() in ("1", "y", "yes", "true") for k in ENGINE_ENV)


def warn_if_weights_only_load() -> None:
    if not weights_only_env_ok():
        logger.warning(
            "torch %s loads checkpoints with weights_only=True: resuming and generation will fail to read fairseq "
            "checkpoints; run the engine with %s (smx does this for its own runs)",
            torch.__version__, " ".join(f"{k}={v}" for k, v in ENGINE_ENV.items()),
        )


def refuse_unsupported(cfg) -> None:
    """Raise ValueError for fairseq options the MoE layers do not support. cfg: TransformerConfig or namespace."""
    for key in ("checkpoint_activations", "offload_activations", "scale_fc"):
        if getattr(cfg, key, False):
            raise ValueError(f"--{key.replace('_', '-')} is not supported with smx MoE models")


def bf16_keeps_tpu_off(common, argv: Sequence[str]) -> bool:
    """Undo fairseq's `--bf16 implies --tpu` (in place) on parsed args or cfg.common: tpu stays on only where argv
    asked for it. -> whether tpu was turned off."""
    if getattr(common, "bf16", False) and getattr(common, "tpu", False) and "--tpu" not in argv:
        common.tpu = False
        return True
    return False


def install_bf16_on_any_device() -> None:
    """Wrap fairseq.distributed.utils.call_main, the first thing every fairseq_cli module runs after parsing, with
    bf16_keeps_tpu_off on its cfg.common and the copy in cfg.distributed_training (once per process).
    Installed by smx.fairseq_plugin.register, i.e. when fairseq imports the --user-dir during parsing: fairseq_cli
    sets up logging before it imports fairseq, so nothing of fairseq may be imported earlier."""
    from fairseq.distributed import utils as distributed_utils

    original = distributed_utils.call_main
    if getattr(original, "smx_bf16_on_any_device", False):
        return

    @functools.wraps(original)
    def call_main(cfg, main, **kwargs):
        if bf16_keeps_tpu_off(cfg.common, sys.argv[1:]):
            cfg.distributed_training.tpu = False  # infer_init_method reads this copy
        return original(cfg, main, **kwargs)

    call_main.smx_bf16_on_any_device = True
    distributed_utils.call_main = call_main
