"""fairseq models built in-process through fairseq's registry, and one training update of each on shared batches.

A "training update" is fairseq's own task.train_step (model.train(), criterion forward, backward) followed by the
fairseq optimizer's step and zero_grad: what fairseq_cli.train's Trainer does per update, minus logging and
validation. Both sides of a comparison get the same (pre-collated) batches of the same binarized data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import data_prep
from smx.engine import contract as plugin_env

DATASET = "synthetic-mt"


@dataclass
class Parts:
    name: str
    task: object
    model: torch.nn.Module
    criterion: torch.nn.Module
    optimizer: object
    num_params: int
    update: int = 0


def ensure_data(root: Path) -> Path:
    """The binarized synthetic-mt data (prepared once, deterministic). -> its bin/ directory."""
    if not data_prep.is_prepared(DATASET, root):
        data_prep.prepare(DATASET, root=root, progress=False)
    return data_prep.bin_dir(DATASET, root)


def translation_argv(data: Path, arch: str, max_tokens: int, seed: int, extra: list[str]) -> list[str]:
    """On the CPU; device_argv() turns it into a GPU one."""
    return [str(data), "--task", "translation", "--source-lang", "src", "--target-lang", "tgt", "--arch", arch,
            "--user-dir", str(plugin_env.user_dir()), "--cpu", "--seed", str(seed), "--max-tokens", str(max_tokens),
            "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", "5e-4", "--dropout", "0.1",
            "--share-all-embeddings", "--label-smoothing", "0.1", "--num-workers", "0", *extra]


def dense_args(data: Path, arch: str, max_tokens: int, seed: int) -> list[str]:
    """fairseq's stock dense transformer and criterion."""
    return translation_argv(data, arch, max_tokens, seed, ["--criterion", "label_smoothed_cross_entropy"])


def moe_args(data: Path, arch: str, max_tokens: int, seed: int, estimator: str, experts: int) -> list[str]:
    return translation_argv(data, arch, max_tokens, seed, [
        "--criterion", plugin_env.TRANSLATION_CRITERION, "--moe-num-experts", str(experts), "--moe-k", "1",
        "--moe-estimator", estimator, "--moe-balance-weight", "0.01", "--moe-zloss-weight", "0.001"])


def device_argv(argv: list[str], device: str, precision: str) -> list[str]:
    """argv for `device` (cpu | cuda) and `precision` (fp32 | fp16 | bf16: fairseq's --fp16 / --bf16)."""
    out = [a for a in argv if a != "--cpu"] if device == "cuda" else list(argv)
    return out + ({"fp16": ["--fp16"], "bf16": ["--bf16"]}.get(precision, []))


def training_cfg(argv: list[str]):
    """fairseq_cli.train's option parsing of `argv` -> its omegaconf config, with the plugin registered once and
    --bf16 usable on any device (smx.fairseq_plugin.engine.bf16_keeps_tpu_off)."""
    import smx.fairseq_plugin.register  # noqa: F401  (the plugin's models and criteria, registered once)
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from smx.fairseq_plugin.engine import bf16_keeps_tpu_off

    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    bf16_keeps_tpu_off(args, argv)
    return convert_namespace_to_omegaconf(args)


@dataclass
class TrainerParts:
    name: str
    trainer: object  # fairseq.trainer.Trainer
    num_params: int


def build_trainer(name: str, argv: list[str], seed: int) -> TrainerParts:
    """fairseq's own Trainer (device placement, fp16 / bf16 with fp32 master weights, optimizer) as fairseq_cli.train
    builds it, for one process."""
    from fairseq import tasks
    from fairseq.trainer import Trainer

    cfg = training_cfg(argv)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    torch.manual_seed(seed)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    trainer = Trainer(cfg, task, model, criterion)
    return TrainerParts(name, trainer, sum(p.numel() for p in model.parameters() if p.requires_grad))


def trainer_batches(parts: TrainerParts, max_tokens: int, count: int, seed: int) -> list[dict]:
    task = parts.trainer.task
    iterator = task.get_batch_iterator(dataset=task.dataset("train"), max_tokens=max_tokens, seed=seed,
                                       required_batch_size_multiple=8, num_workers=0)
    return [sample for sample, _ in zip(iterator.next_epoch_itr(shuffle=True), range(count))]


def trainer_update_fn(parts: TrainerParts, samples: list[dict]) -> Callable[[], int]:
    """One Trainer.train_step per call (fairseq moves the batch to the device); returns its target tokens."""
    state = {"update": 0}

    def step() -> int:
        sample = samples[state["update"] % len(samples)]
        parts.trainer.train_step([sample])
        state["update"] += 1
        return int(sample["ntokens"])
    return step


def build(name: str, argv: list[str], seed: int) -> Parts:
    """fairseq's option parsing, task, model, criterion and optimizer, as fairseq_cli.train sets them up."""
    from fairseq import optim, tasks

    cfg = training_cfg(argv)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    torch.manual_seed(seed)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optim.build_optimizer(cfg.optimizer, params)
    return Parts(name, task, model, criterion, optimizer, sum(p.numel() for p in params))


def batches(parts: Parts, max_tokens: int, count: int, seed: int) -> list[dict]:
    """The first `count` training batches (fairseq's batching, shuffled with `seed`), collated."""
    task = parts.task
    iterator = task.get_batch_iterator(dataset=task.dataset("train"), max_tokens=max_tokens, seed=seed,
                                       required_batch_size_multiple=8, num_workers=0)
    out = []
    for sample in iterator.next_epoch_itr(shuffle=True):
        out.append(sample)
        if len(out) == count:
            break
    return out


def update_fn(parts: Parts, samples: list[dict]) -> Callable[[], int]:
    """One training update per call, cycling over `samples`; returns the batch's target tokens (fairseq's wps
    numerator). Both sides of a pair run the same batch."""
    def step() -> int:
        sample = samples[parts.update % len(samples)]
        parts.task.train_step(sample, parts.model, parts.criterion, parts.optimizer, parts.update)
        parts.optimizer.step()
        parts.optimizer.zero_grad()
        parts.update += 1
        return int(sample["ntokens"])
    return step
