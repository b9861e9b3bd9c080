"""End to end: `smx train` runs the fairseq engine and leaves a complete run directory (slow: tens of seconds each).

Checked per run: every file of DESIGN.md section 6, metrics.jsonl with falling train and valid losses, readable
TensorBoard events, checkpoint hashes matching SHA256SUMS, meta.json status done, lock released.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smx.run import metrics
from smx.engine import procfs
from smx.recipe import recipes
from smx.run import paths as rundir
from smx.estimators import names as estimator_names

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def smx_train(run_dir: Path, data_root: Path, *args: str) -> subprocess.Popen:
    """`smx train recipes/tiny.yaml --run-dir RUN_DIR ARGS` as a child process (stdout/stderr piped, text)."""
    cmd = [sys.executable, "-c", "import sys; from smx.cli import run; sys.exit(run(sys.argv[1:]))", "train",
           str(REPO / "recipes/tiny.yaml"), "--run-dir", str(run_dir), "--set", f"data.root={data_root}", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def check_run_dir(path: Path, split_keys: tuple[str, ...] = ("loss", "ppl")) -> list[dict]:
    run = rundir.RunDir(path)
    for f in (run.recipe, run.recipe_orig, run.meta, run.argv, run.metrics, run.log,
              run.checkpoints / "checkpoint_last.pt", run.checkpoints / "checkpoint_best.pt",
              run.checkpoints / "SHA256SUMS"):
        assert f.is_file(), f
    assert run.tb.is_dir() and run.eval.is_dir() and not run.lock.exists()
    meta = json.loads(run.meta.read_text())
    assert meta["status"] == "done" and meta["exit_code"] == 0 and meta["end"]
    assert recipes.loads(run.recipe.read_text()).name == meta["recipe"]
    assert any(m in run.argv.read_text() for m in ("-m fairseq_cli.train", "-m smx.engine.entry"))
    entries = metrics.read(run.metrics)
    train = [e for e in entries if e["split"] == "train"]
    valid = [e for e in entries if e["split"] == "valid"]
    assert len(train) >= 3 and len(valid) >= 2
    for e in entries:
        for key in ("step", "epoch", "wall", *split_keys):
            assert key in e, (key, e)
        assert any(k.startswith("moe_load_") for k in e)
    assert train[-1]["loss"] < train[0]["loss"] and valid[-1]["loss"] < valid[0]["loss"]
    assert all(a["wall"] <= b["wall"] for a, b in zip(train, train[1:]))
    assert rundir.verify_checksums(run.checkpoints) == []
    sums = (run.checkpoints / "SHA256SUMS").read_text()
    assert "checkpoint_last.pt" in sums and "checkpoint_best.pt" in sums
    check_tensorboard(run.tb)
    return entries


def check_tensorboard(tb: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for sub in ("train_inner", "valid"):
        acc = EventAccumulator(str(tb / sub))
        acc.Reload()
        tags = acc.Tags()["scalars"]
        assert "loss" in tags and any(t.startswith("moe_load_") for t in tags), (sub, tags)
        losses = [ev.value for ev in acc.Scalars("loss")]
        assert len(losses) >= 2 and losses[-1] < losses[0]


@pytest.mark.parametrize("estimator", estimator_names())
def test_tiny_recipe_with_each_estimator(train, tmp_path: Path, estimator: str):
    started = time.monotonic()
    assert train("tiny.yaml", "--estimator", estimator) == 0
    run_path = tmp_path / "runs" / f"tiny-{estimator}-s1"
    entries = check_run_dir(run_path)
    assert max(e["step"] for e in entries) == 60
    meta = json.loads((run_path / "meta.json").read_text())
    assert meta["estimator"] == estimator and meta["argv"][:2] == ["smx", "train"]
    assert meta["protocol"] == "controlled" and meta["arm"]["estimator"] == estimator
    assert meta["arm"]["moe.balance_reduction"] == "token_mean" and meta["arm"]["router.options"] == {}
    print(f"tiny {estimator}: {time.monotonic() - started:.1f} s wall")


def test_reference_protocol_run_records_its_arm(train, tmp_path: Path):
    """A reference-protocol run trains with the reference's flags and records the resolved arm in meta.json."""
    assert train("tiny.yaml", "--estimator", "sparsemixer", "--set", "router.protocol=reference",
                 "--set", "train.max_update=20") == 0
    run_path = tmp_path / "runs" / "tiny-sparsemixer-s1"
    meta = json.loads((run_path / "meta.json").read_text())
    assert meta["protocol"] == "reference" and meta["arm"]["moe.output_scale"] is True
    assert meta["arm"]["moe.balance_reduction"] == "batch_sum" and "microsoft/SparseMixer" in meta["arm"]["reference"]
    argv = (run_path / "fairseq_argv.txt").read_text()
    for flag in ("--moe-output-scale", "--moe-router-bias", "--moe-balance-source reference",
                 "--moe-balance-reduction batch_sum"):
        assert flag in argv
    assert recipes.loads((run_path / "recipe.yaml").read_text()).moe.output_scale is True


def test_bf16_trains_on_the_cpu_and_evaluates(train, tmp_path: Path):
    """train.bf16 reaches fairseq as --bf16 with tpu off (fairseq 0.12 alone would ask torch_xla for a TPU), the
    engine trains in bfloat16: its losses follow the float32 run of the same seed closely, and not exactly (the flag
    did something), the checkpoint records bf16 without tpu, and the run evaluates."""
    import torch

    from smx.cli import run as smx_cli

    common = ("--estimator", "topk", "--set", "train.max_update=20", "--set", "train.log_interval=5")
    assert train("tiny.yaml", *common, "--run-dir", str(tmp_path / "fp32")) == 0
    assert train("tiny.yaml", *common, "--set", "train.bf16=true", "--run-dir", str(tmp_path / "bf16")) == 0
    assert "--bf16" in (tmp_path / "bf16" / "fairseq_argv.txt").read_text()
    assert "--bf16" not in (tmp_path / "fp32" / "fairseq_argv.txt").read_text()
    common_cfg = torch.load(tmp_path / "bf16" / "checkpoints" / "checkpoint_last.pt", weights_only=False)["cfg"]["common"]
    assert (common_cfg["bf16"], common_cfg["tpu"], common_cfg["cpu"]) == (True, False, True)
    losses = {name: {e["step"]: e["loss"] for e in metrics.read(tmp_path / name / "metrics.jsonl")
                     if e["split"] == "train" and not e.get("epoch_end")} for name in ("fp32", "bf16")}
    assert losses["bf16"].keys() == losses["fp32"].keys() and len(losses["bf16"]) >= 3
    for step, loss in losses["fp32"].items():
        assert losses["bf16"][step] == pytest.approx(loss, rel=0.03), step
    assert losses["bf16"] != losses["fp32"]
    assert smx_cli(["eval", "bleu", str(tmp_path / "bf16")]) == 0
    bleu = json.loads((tmp_path / "bf16" / "eval" / "bleu.json").read_text())
    assert 0 <= bleu["sacrebleu"] <= 100 and bleu["n_sentences"] > 0


def test_tiny_lm_logs_perplexity(train, tmp_path: Path):
    assert train("tiny_lm.yaml") == 0
    entries = check_run_dir(tmp_path / "runs" / "tiny_lm-sparsemixer_v2-s1")
    for e in entries:
        assert e["ppl"] == pytest.approx(2 ** e["loss"], rel=0.01)  # base-2 loss, ppl = 2^loss


def test_resume_matches_uninterrupted_run(train, tmp_path: Path):
    """Stopped at 30 updates, resumed to 60 == straight to 60 (same seed).

    Tolerance: 2e-3 absolute on logged losses (fairseq rounds them to 3 decimals); on CPU the runs are in fact
    identical, thanks to the "D:D" data argument (see smx.engine.argv.fairseq_argv).
    """
    common = ("--estimator", "sparsemixer", "--seed", "3")
    assert train("tiny.yaml", *common, "--run-dir", str(tmp_path / "straight")) == 0
    assert train("tiny.yaml", *common, "--run-dir", str(tmp_path / "split"), "--set", "train.max_update=30") == 0
    first = metrics.read(tmp_path / "split" / "metrics.jsonl")
    assert max(e["step"] for e in first) == 30
    assert train(None, "--resume", str(tmp_path / "split"), "--set", "train.max_update=60") == 0
    straight = check_run_dir(tmp_path / "straight")
    resumed = check_run_dir(tmp_path / "split")
    key = lambda e: (e["split"], e["step"])  # noqa: E731
    a = {key(e): e for e in straight}
    b = {key(e): e for e in resumed}
    assert set(a) == set(b)
    for k in a:
        for stat in ("loss", "nll_loss", "ppl", "moe_balance"):
            assert b[k][stat] == pytest.approx(a[k][stat], abs=2.001e-3), (k, stat)
    assert b[("valid", 60)]["loss"] == pytest.approx(a[("valid", 60)]["loss"], abs=2e-3)
    meta = json.loads((tmp_path / "split" / "meta.json").read_text())
    assert meta["status"] == "done" and len(meta["resumes"]) == 1
    assert recipes.loads((tmp_path / "split" / "recipe.yaml").read_text()).train.max_update == 60
    # wall clock continues across the resume
    walls = [e["wall"] for e in resumed if e["split"] == "train"]
    assert walls == sorted(walls)


def test_sigint_marks_interrupted(data_root: Path, tmp_path: Path):
    run_dir = tmp_path / "int"
    proc = smx_train(run_dir, data_root, "--set", "train.max_update=100000", "--no-progress")
    deadline = time.monotonic() + 240
    while not (run_dir / "metrics.jsonl").is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert (run_dir / "metrics.jsonl").is_file(), proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "interrupted" and meta["end"]
    assert not (run_dir / "run.lock").exists()
    assert "Traceback" not in err.split("smx")[0]


def test_two_gloo_processes(train, tmp_path: Path):
    """--nproc-per-node 2 (torchrun, gloo, CPU) finishes; compared with one process at twice the batch."""
    assert train("tiny.yaml", "--nproc-per-node", "2", "--run-dir", str(tmp_path / "ddp")) == 0
    ddp = check_run_dir(tmp_path / "ddp")
    meta = json.loads((tmp_path / "ddp" / "meta.json").read_text())
    assert meta["world_size"] == 2 and "torch.distributed.run" in (tmp_path / "ddp" / "fairseq_argv.txt").read_text()
    assert train("tiny.yaml", "--run-dir", str(tmp_path / "single"), "--set", "train.max_tokens=4096") == 0
    single = check_run_dir(tmp_path / "single")
    last = lambda entries: metrics.last(entries, "valid")["loss"]  # noqa: E731
    print(f"valid loss at update 60: 2 procs x 2048 tokens {last(ddp):.3f}, 1 proc x 4096 tokens {last(single):.3f}")
    assert abs(last(ddp) - last(single)) < 0.5
    def wpb(entries: list[dict]) -> float:
        values = [e["wpb"] for e in entries if e["split"] == "train" and "wpb" in e]
        return sum(values) / len(values)

    print(f"words per batch: 2 procs {wpb(ddp):.0f}, 1 proc {wpb(single):.0f}")
    assert wpb(ddp) == pytest.approx(wpb(single), rel=0.25)  # the same batch size in tokens per update


def test_two_nodes_on_one_host_worker_node_started_first(data_root: Path, tmp_path: Path):
    """--nnodes 2 as on a cluster with a shared filesystem, both "nodes" on this host (one gloo process each). The
    node-rank-1 launcher starts first and must leave the run directory to node 0 (creating it would make node 0
    refuse the directory as existing); node 0 then keeps every record and both finish."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "two-nodes"

    def node(rank: int) -> subprocess.Popen:
        return smx_train(run_dir, data_root, "--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1",
                         "--master-addr", "127.0.0.1", "--master-port", str(port), "--no-progress")

    worker = node(1)
    try:
        deadline = time.monotonic() + 120
        while not procfs.children(worker.pid) and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # until the worker node's torchrun runs (everything before it has been done)
        assert procfs.children(worker.pid), worker.communicate()
        assert not run_dir.exists()
        main = node(0)
        try:
            _, main_err = main.communicate(timeout=300)
            _, worker_err = worker.communicate(timeout=60)
        finally:
            main.kill()
    finally:
        worker.kill()
    assert main.returncode == 0, main_err
    assert worker.returncode == 0, worker_err
    entries = check_run_dir(run_dir)
    assert max(e["step"] for e in entries) == 60  # tiny.yaml's max_update
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["world_size"] == 2 and "--nnodes 2" in (run_dir / "fairseq_argv.txt").read_text()
