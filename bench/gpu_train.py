"""The GPU check's training part, through the real engine on synthetic-mt.

1. tokens/s side by side, in one process, interleaved: the Switch Transformer (base on CUDA: 8 experts of the dense
   FFN's size, top-1, so the same active size) against fairseq's stock `transformer` of the same size, each through
   fairseq's own Trainer.train_step (device placement, mixed precision with fp32 master weights on CUDA), the same
   batches. Ratio = Switch tok/s / dense tok/s; target >= 0.90 on CUDA.
2. `smx train` of that Switch model for `updates` updates (300 on CUDA), then `smx eval bleu` of the run: its BLEU,
   its median logged tokens/s and its wall time.
Precision on CUDA: bf16 where the GPU has it (train.bf16; torch's grouped GEMM has a kernel for bf16 only and falls
back to a host-synchronising loop in fp16), fp16 otherwise; fp32 on the CPU.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import fairseq_models as fm
from bench.gpu_layer import timed_pairs
from bench.harness import REPO_ROOT, make_row

TINY_DENSE = ["--encoder-embed-dim", "64", "--encoder-ffn-embed-dim", "128", "--encoder-layers", "2",
              "--encoder-attention-heads", "4", "--decoder-embed-dim", "64", "--decoder-ffn-embed-dim", "128",
              "--decoder-layers", "2", "--decoder-attention-heads", "4"]


def precision(device) -> str:
    """fp32 on the CPU; on CUDA bf16 where the GPU supports it, else fp16."""
    import torch

    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def throughput(device, data_root: Path, quick: bool, repeats: int, warmup: int, dtype: str | None = None):
    """-> bench.harness.Row: Switch vs stock dense transformer tokens/s, in `dtype` (default: precision(device)).
    The target is the check's precision's; another one (fp16 beside bf16 on CUDA) is reported without."""
    import torch

    cuda = device.type == "cuda"
    data = fm.ensure_data(data_root)
    size = "tiny" if quick and not cuda else "base"
    max_tokens = 8192 if cuda else 1024
    checked = precision(device)  # the check's own precision: the only one with a target
    dtype = dtype or checked
    target = ">= 0.90" if cuda and dtype == checked else ""
    moe_argv = fm.device_argv(fm.moe_args(data, f"smx_switch_transformer_{size}", max_tokens, 1, "topk", 8),
                              device.type, dtype)
    dense_argv = fm.device_argv(fm.dense_args(data, "transformer", max_tokens, 1) + (TINY_DENSE if size == "tiny"
                                                                                     else []), device.type, dtype)
    moe = fm.build_trainer("switch", moe_argv, 1)
    dense = fm.build_trainer("dense", dense_argv, 1)
    samples = fm.trainer_batches(dense, max_tokens, 4, 1)
    pairs = timed_pairs(fm.trainer_update_fn(moe, samples), fm.trainer_update_fn(dense, samples), repeats, warmup,
                        device)
    tokens = [int(s["ntokens"]) for s in samples]
    # timed_pairs returns seconds per call: tokens/s from the mean batch (the batches cycle in the same order)
    work = [tokens[i % len(tokens)] for i in range(len(pairs.times_a))]
    pairs = type(pairs)(pairs.times_a, pairs.times_b, work, work, pairs.other_cores, pairs.discarded)
    del moe, dense
    if cuda:
        torch.cuda.empty_cache()
    return make_row(f"training tokens/s ({size}, {dtype})", f"smx_switch_transformer_{size} (8 experts, topk)",
                    f"transformer{' (tiny dims)' if size == 'tiny' else ''} (stock fairseq)", pairs,
                    target, throughput=True,
                    notes=f"synthetic-mt, max_tokens {max_tokens}, 4 batches cycled, fairseq Trainer.train_step")


def engine_run(device, data_root: Path, work: Path, quick: bool) -> dict:
    """smx train + smx eval bleu; -> what they measured (a dict for the JSON)."""
    cuda = device.type == "cuda"
    updates = 300 if cuda or not quick else 30
    run = work / "switch-run"
    overrides = {"name": "gpu-check", "model.arch": "base" if cuda else "tiny", "moe.num_experts": 8,
                 "train.max_update": updates, "train.max_tokens": 8192 if cuda else 2048,
                 "train.validate_interval_updates": updates // 2, "train.save_interval_updates": updates // 2,
                 "router.estimator": "topk", "data.root": str(data_root)}
    dtype = precision(device)
    if dtype == "bf16":
        overrides["train.bf16"] = "true"
    cmd = [sys.executable, "-m", "smx", "train", str(REPO_ROOT / "recipes" / "tiny.yaml"), "--run-dir", str(run),
           "--device", device.type, "--no-progress"]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={value}"]
    begin = time.monotonic()
    train = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    train_s = time.monotonic() - begin
    out = {"command": " ".join(cmd), "updates": updates, "precision": dtype, "train_rc": train.returncode,
           "train_wall_s": round(train_s, 1)}
    if train.returncode != 0:
        out["train_error"] = (train.stderr or train.stdout)[-2000:]
        return out
    wps = [e["wps"] for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
           if e.get("split") == "train" and not e.get("epoch_end") and "wps" in e]
    out["median_wps"] = statistics.median(wps[1:] or wps) if wps else None
    begin = time.monotonic()
    ev = subprocess.run([sys.executable, "-m", "smx", "eval", "bleu", str(run)], capture_output=True, text=True,
                        cwd=REPO_ROOT)
    out.update({"eval_rc": ev.returncode, "eval_wall_s": round(time.monotonic() - begin, 1)})
    if ev.returncode != 0:
        out["eval_error"] = (ev.stderr or ev.stdout)[-2000:]
        return out
    bleu = json.loads((run / "eval" / "bleu.json").read_text())
    out["bleu"] = {k: bleu.get(k) for k in ("bleu_tok", "sacrebleu", "subset", "checkpoint", "n_sentences")}
    return out
