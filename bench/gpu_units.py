"""The GPU check's unit part: the MoE layer on the device against the CPU, backend against backend, host syncs.

- equivalence: every estimator's layer forward and backward (output, balance and z-loss, gradients of the input and
  of every parameter) in float32 and bfloat16 on the device equal to the CPU result, in training (no padding) and
  evaluation (with padding). The device side runs the sync-free form (static plans, grouped_mm where it applies),
  the CPU side the CPU form (padding removed, fused experts). Training noise is drawn on the CPU from one seed for
  both sides (cpu_noise), so that both sample the same experts. Error = max over the tensors of
  ||device - cpu|| / ||cpu||; tolerance float32 1e-4 (TF32 off), bfloat16 3e-2.
- backends: grouped_mm == loop on the device (same static plan), with padding, dropless and with a capacity.
- host syncs: the training forward + backward with padding, dropless and with capacity 1.25, for every estimator:
  bench.host_sync.HostSyncs on any device, and on CUDA also torch.cuda.set_sync_debug_mode("error"); bfloat16 on
  CUDA. Also on CUDA, reported apart and not part of "ok": the same step in float16 (what fairseq --fp16 trains in),
  for which torch documents no grouped GEMM kernel: its fallback is expected to read the offsets on the host
  (train.bf16 is the sync-free precision there).
"""

from __future__ import annotations

import contextlib
import importlib
from typing import Iterator

import torch

from bench.host_sync import HostSyncs
from smx import estimators
from smx.moe import MoEConfig, MoEFeedForward

TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}
D_MODEL, D_FF, EXPERTS = 64, 128, 8


def estimator_k() -> list[tuple[str, int]]:
    """Every registered estimator with the k it routes (top-2 for those that take no top-1)."""
    out = []
    for name in estimators.names():
        est = estimators.get(name)
        try:
            est.validate(1, EXPERTS)
            out.append((name, 1))
        except ValueError:
            out.append((name, 2))
    return out


@contextlib.contextmanager
def cpu_noise(seed: int) -> Iterator[None]:
    """The estimators' gumbel / uniform noise drawn on the CPU from `seed`, then moved to the tensors' device."""
    base = importlib.import_module("smx.estimators.base")
    generator = torch.Generator().manual_seed(seed)

    def gumbel(shape, like, _generator=None):
        e = torch.empty(shape, dtype=torch.float32).exponential_(generator=generator)
        return (-e.log()).to(device=like.device, dtype=like.dtype)

    def uniform(shape, device, _generator=None):
        return torch.rand(shape, generator=generator).to(device)

    originals = {"gumbel": base.gumbel, "uniform": base.uniform}
    patched = []
    for name in ["smx.estimators.base"] + [f"smx.estimators.{n}" for n in
                                          ("sparsemixer", "sparsemixer_inf", "sparsemixer_v2", "straight_through",
                                           "sparsemixer_1st", "topk", "default_moe", "densemixer")]:
        module = importlib.import_module(name)
        for attr, fn in (("gumbel", gumbel), ("uniform", uniform)):
            if getattr(module, attr, None) is originals[attr]:
                patched.append((module, attr, getattr(module, attr)))
                setattr(module, attr, fn)
    try:
        yield
    finally:
        for module, attr, fn in patched:
            setattr(module, attr, fn)


def layer_pair(estimator: str, k: int, device: torch.device, dtype: torch.dtype, capacity_factor: float | None = None
               ) -> tuple[MoEFeedForward, MoEFeedForward]:
    """(CPU layer, device layer) with the same parameters, in `dtype`."""
    torch.manual_seed(0)
    cfg = MoEConfig(num_experts=EXPERTS, k=k, estimator=estimator, capacity_factor=capacity_factor,
                    eval_capacity_factor=capacity_factor)
    cpu = MoEFeedForward(D_MODEL, D_FF, cfg).to(dtype=dtype)
    dev = MoEFeedForward(D_MODEL, D_FF, cfg)
    dev.load_state_dict(cpu.state_dict())
    dev = dev.to(device=device, dtype=dtype)
    dev.sync_free = True
    if device.type == "cpu":
        dev.expert_backend = "grouped_mm"  # the accelerators' backend, exercised on the CPU
    return cpu, dev


def step(layer: MoEFeedForward, x: torch.Tensor, pad: torch.Tensor | None, g: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward + backward; -> every output and gradient, as float64 on the CPU."""
    for p in layer.parameters():
        p.grad = None
    x = x.detach().clone().requires_grad_(True)
    out = layer(x, pad)
    torch.autograd.backward([out.y, out.aux_loss(0.5, 0.1)], [g, torch.ones((), device=x.device)])
    tensors = {"y": out.y, "balance_loss": out.balance_loss, "z_loss": out.z_loss, "penalty": out.penalty,
               "grad_x": x.grad}
    tensors.update({f"grad_{n}": p.grad for n, p in layer.named_parameters() if p.grad is not None})
    return {n: t.detach().double().cpu() for n, t in tensors.items()}


def relative_error(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> tuple[float, str]:
    """max over tensors of ||a - b|| / ||b|| (absolute where ||b|| is 0), and the worst tensor's name."""
    if a.keys() != b.keys():
        return float("inf"), f"different gradients: {sorted(a.keys() ^ b.keys())}"
    worst, name = 0.0, ""
    for key in a:
        err = float((a[key] - b[key]).norm() / max(float(b[key].norm()), 1e-12))
        if not err <= worst:  # NaN counts as worst
            worst, name = err, key
    return worst, name


def inputs(device: torch.device, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (8, 32, d), padding (8, 32) with every other row left-padded, upstream gradient (8, 32, d)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 32, D_MODEL, generator=generator)
    g = torch.randn(8, 32, D_MODEL, generator=generator)
    pad = torch.zeros(8, 32, dtype=torch.bool)
    pad[::2, :5] = True
    return x.to(dtype), pad, g.to(dtype)


def equivalence(device: torch.device) -> list[dict]:
    rows = []
    for (estimator, k), dtype, mode in [(ek, dt, m) for ek in estimator_k() for dt in TOLERANCE
                                        for m in ("train", "eval")]:
        cpu, dev = layer_pair(estimator, k, device, dtype)
        x, pad, g = inputs(torch.device("cpu"), dtype, 1)
        for layer in (cpu, dev):
            layer.train(mode == "train")
        use_pad = pad if mode == "eval" else None
        with cpu_noise(7):
            want = step(cpu, x, use_pad, g)
        with cpu_noise(7):
            got = step(dev, x.to(device), None if use_pad is None else use_pad.to(device), g.to(device))
        err, worst = relative_error(got, want)
        rows.append({"estimator": estimator, "k": k, "dtype": str(dtype).removeprefix("torch."), "mode": mode,
                     "padding": use_pad is not None, "max_rel_err": err, "worst": worst,
                     "tolerance": TOLERANCE[dtype], "ok": err <= TOLERANCE[dtype]})
    return rows


def backends(device: torch.device) -> list[dict]:
    rows = []
    for dtype, capacity in [(dt, cf) for dt in TOLERANCE for cf in (None, 1.0)]:
        _, grouped = layer_pair("topk", 2, device, dtype, capacity)
        _, loop = layer_pair("topk", 2, device, dtype, capacity)
        grouped.expert_backend, loop.expert_backend = "grouped_mm", "loop"
        x, pad, g = inputs(device, dtype, 2)
        for layer in (grouped, loop):
            layer.train()
        err, worst = relative_error(step(grouped, x, pad, g), step(loop, x, pad, g))
        tol = TOLERANCE[dtype] if dtype != torch.float32 else 1e-5
        rows.append({"dtype": str(dtype).removeprefix("torch."), "capacity_factor": capacity, "max_rel_err": err,
                     "worst": worst, "tolerance": tol, "ok": err <= tol})
    return rows


def host_syncs(device: torch.device, dtype: torch.dtype | None = None,
               cases: list[tuple[str, int, float | None]] | None = None) -> list[dict]:
    """The training step of each case (estimator, k, capacity; default: every estimator, dropless and 1.25) in `dtype`
    (default: bfloat16 on CUDA, float32 on the CPU), checked for host synchronisation."""
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    cases = cases or [(name, k, cf) for name, k in estimator_k() for cf in (None, 1.25)]
    rows = []
    for estimator, k, capacity in cases:
        _, layer = layer_pair(estimator, k, device, dtype, capacity)
        layer.train()
        x, pad, g = inputs(device, layer.w1.dtype, 3)
        step(layer, x, pad, g)  # warm-up: lazy initialisation outside the checked region
        with HostSyncs() as found:
            run_step_on_device(layer, x, pad, g)
        cuda_error = None
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                run_step_on_device(layer, x, pad, g)
            except RuntimeError as err:
                cuda_error = str(err).splitlines()[0]
            finally:
                torch.cuda.set_sync_debug_mode(0)
        rows.append({"estimator": estimator, "k": k, "capacity_factor": capacity,
                     "dtype": str(dtype).removeprefix("torch."), "syncs": found.summary(),
                     "cuda_sync_debug_error": cuda_error, "ok": not found.found and cuda_error is None})
    return rows


def run_step_on_device(layer: MoEFeedForward, x: torch.Tensor, pad: torch.Tensor, g: torch.Tensor) -> None:
    """Forward + backward with every tensor left on the device (nothing read back)."""
    for p in layer.parameters():
        p.grad = None
    out = layer(x, pad)
    torch.autograd.backward([out.y, out.aux_loss(0.01)], [g, torch.ones((), device=x.device)])


def run(device: torch.device) -> dict:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    parts = {"equivalence": equivalence(device), "backends": backends(device), "host_syncs": host_syncs(device)}
    parts["ok"] = all(row["ok"] for rows in parts.values() for row in rows)
    if device.type == "cuda":  # informational (not in ok): fairseq --fp16 training; syncs expected (see the docstring)
        parts["host_syncs_fp16"] = host_syncs(device, torch.float16, [("topk", 1, None)])
    return parts
