"""Recipe + run directory -> the fairseq_cli.train arguments: a pure function, golden-tested (tests/engine/golden).

    argv = fairseq_argv(recipe, run_dir, data_dir, resume=False, device="cpu")

fairseq is never imported here; smx.engine.process turns the arguments into the command that runs them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from smx.engine import contract as engine
from smx.recipe.recipes import Recipe


def _num(value: float | int) -> str:
    """Numbers as fairseq reads them back exactly: 7e-4 -> '0.0007', 1e-7 -> '1e-07', 4.0 -> '4.0'."""
    return repr(value) if isinstance(value, float) else str(value)


def _layers(indices: tuple[int, ...]) -> str:
    return ",".join(str(i) for i in indices)


def fairseq_argv(recipe: Recipe, run_dir: str | Path, data_dir: str | Path, resume: bool, device: str,
                 world_size: int = 1, restore: str = "checkpoint_last.pt") -> list[str]:
    """The fairseq_cli.train arguments for `recipe` (no interpreter/module prefix). Pure: same input, same list.

    device: "cpu" or "cuda" (already resolved). world_size: total engine processes (> 1: distributed training).
    resume: restore the checkpoint `restore` of the run's checkpoints/ (checkpoint_best.pt when the run died before
    its first checkpoint_last.pt).
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
    a += ["--moe-shared-experts", str(moe.shared_experts)] if moe.shared_experts else []
    a += ["--moe-expert-ffn-dim", str(moe.expert_ffn_dim)] if moe.expert_ffn_dim is not None else []
    a += ["--moe-score", moe.score] if moe.score != "softmax" else []
    a += ["--moe-balance", moe.balance, "--moe-bias-update-rate", _num(moe.bias_update_rate)] \
        if moe.balance != "loss" else []

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
    elif o.scheduler == "polynomial_decay":  # power 1: linear; fairseq's total_num_update is max_update
        a += ["--end-learning-rate", _num(o.end_lr), "--power", "1.0", "--total-num-update", str(t.max_update)]

    a += ["--max-tokens", str(t.max_tokens)]
    if t.batch_size is not None:
        a += ["--batch-size", str(t.batch_size)]
    a += ["--update-freq", str(t.update_freq), "--max-update", str(t.max_update), "--max-epoch", str(t.max_epoch),
          "--num-workers", str(t.num_workers), "--skip-invalid-size-inputs-valid-test", "--seed", str(recipe.seed)]
    if t.max_wall_minutes:  # fairseq counts training time across resumes; at the limit it validates, saves, stops
        a += ["--stop-time-hours", _num(t.max_wall_minutes / 60.0)]

    ckpt = run_dir / "checkpoints"
    a += ["--save-dir", str(ckpt), "--no-epoch-checkpoints", "--keep-interval-updates", str(t.keep_last),
          "--save-interval-updates", str(t.save_interval_updates),
          "--best-checkpoint-metric", t.best_checkpoint_metric,
          "--validate-interval", str(t.validate_interval),
          "--validate-interval-updates", str(t.validate_interval_updates)]
    if resume:
        a += ["--restore-file", str(ckpt / restore)]
    a += ["--log-format", "json", "--log-interval", str(t.log_interval), "--tensorboard-logdir", str(run_dir / "tb")]

    if device == "cpu":
        a += ["--cpu"]
    if t.bf16:  # on any device (smx.fairseq_plugin.engine: fairseq 0.12 would take it for a TPU)
        a += ["--bf16"]
    elif device != "cpu" and t.fp16 in (True, "auto"):
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
