"""Golden test: recipe -> fairseq_cli.train argv, for every shipped recipe (CPU and GPU), plus resume + DDP.

Regenerate after an intended change with:  SMX_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/engine -q
Paths are placeholders (<RUN>, <DATA>, <USER_DIR>) so the files do not depend on the machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smx.engine import argv as launch
from smx.engine import process
from smx.recipe import recipes
from smx.engine import contract as engine

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
UPDATE = os.environ.get("SMX_UPDATE_GOLDEN") == "1"


def render(argv: list[str]) -> str:
    user_dir = str(engine.user_dir())
    return "\n".join(a.replace(user_dir, "<USER_DIR>") for a in argv) + "\n"


def check(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.is_file(), f"missing golden file {path}; run with SMX_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{name} differs from the golden file (SMX_UPDATE_GOLDEN=1 to accept)"


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_golden_argv(path: Path, device: str):
    recipe = recipes.load(path)
    argv = launch.fairseq_argv(recipe, Path("<RUN>"), Path("<DATA>"), resume=False, device=device)
    check(f"{path.stem}.{device}.txt", render(argv))


def test_golden_resume_distributed():
    recipe = recipes.load(REPO / "recipes/tiny.yaml")
    argv = launch.fairseq_argv(recipe, Path("<RUN>"), Path("<DATA>"), resume=True, device="cpu", world_size=2)
    check("tiny.resume_ddp2.cpu.txt", render(argv))


def test_no_stale_golden_files():
    expected = {f"{p.stem}.{d}.txt" for p in RECIPES for d in ("cpu", "cuda")} | {"tiny.resume_ddp2.cpu.txt"}
    assert {p.name for p in GOLDEN.glob("*.txt")} == expected


def test_argv_is_pure_and_maps_the_contract():
    recipe = recipes.load(REPO / "recipes/wmt14_switch.yaml")
    a = launch.fairseq_argv(recipe, Path("R"), Path("D"), resume=False, device="cuda")
    assert a == launch.fairseq_argv(recipe, Path("R"), Path("D"), resume=False, device="cuda")
    pairs = dict(zip(a, a[1:]))
    assert a[0] == f"D{os.pathsep}D"  # the data dir twice: batches rebuilt per epoch (resumable)
    assert pairs["--task"] == "translation" and pairs["--arch"] == "smx_switch_transformer_base"
    assert pairs["--user-dir"] == str(engine.user_dir())
    assert pairs["--moe-estimator-options"] == '{"jitter_eps": 0.1}'
    assert pairs["--moe-encoder-layers"] == "0,2,4" and pairs["--moe-decoder-layers"] == "0,2,4"
    assert "--moe-capacity-factor" not in a  # dropless
    assert pairs["--lr"] == "0.0007" and pairs["--warmup-init-lr"] == "1e-07" and pairs["--warmup-updates"] == "8000"
    assert pairs["--adam-betas"] == "(0.9, 0.98)"
    assert int(pairs["--max-tokens"]) * int(pairs["--update-freq"]) == 131072
    assert pairs["--criterion"] == "smx_moe_label_smoothed_cross_entropy" and pairs["--label-smoothing"] == "0.1"
    assert pairs["--save-dir"] == str(Path("R/checkpoints")) and pairs["--tensorboard-logdir"] == str(Path("R/tb"))
    assert pairs["--log-format"] == "json" and pairs["--best-checkpoint-metric"] == "loss"
    assert "--fp16" in a and "--cpu" not in a and "--share-all-embeddings" in a and "--restore-file" not in a
    cpu = launch.fairseq_argv(recipe, Path("R"), Path("D"), resume=True, device="cpu")
    assert "--cpu" in cpu and "--fp16" not in cpu
    assert dict(zip(cpu, cpu[1:]))["--restore-file"] == str(Path("R/checkpoints/checkpoint_last.pt"))


def test_lm_argv():
    recipe = recipes.load(REPO / "recipes/tiny_lm.yaml")
    a = launch.fairseq_argv(recipe, Path("R"), Path("D"), resume=False, device="cpu")
    pairs = dict(zip(a, a[1:]))
    assert pairs["--task"] == "language_modeling" and pairs["--arch"] == "smx_switch_lm_tiny"
    assert pairs["--criterion"] == "smx_moe_cross_entropy" and pairs["--tokens-per-sample"] == "64"
    assert "--moe-encoder-layers" not in a and "--label-smoothing" not in a and "--source-lang" not in a
    assert "--share-decoder-input-output-embed" in a and pairs["--moe-k"] == "2"


def test_new_moe_parts_reach_the_argv_only_when_set():
    plain = launch.fairseq_argv(recipes.load(REPO / "recipes/tiny.yaml"), Path("R"), Path("D"), resume=False,
                                device="cpu")
    assert "--moe-shared-experts" not in plain and "--moe-expert-ffn-dim" not in plain
    recipe = recipes.load(REPO / "recipes/tiny.yaml", ["moe.shared_experts=2", "moe.expert_ffn_dim=32"])
    a = launch.fairseq_argv(recipe, Path("R"), Path("D"), resume=False, device="cpu")
    pairs = dict(zip(a, a[1:]))
    assert pairs["--moe-shared-experts"] == "2" and pairs["--moe-expert-ffn-dim"] == "32"
    assert "--moe-score" not in plain and "--moe-balance" not in plain
    recipe = recipes.load(REPO / "recipes/tiny.yaml", ["router.estimator=topk", "moe.score=sigmoid",
                                                       "moe.balance=loss_free", "moe.balance_weight=0"])
    a = launch.fairseq_argv(recipe, Path("R"), Path("D"), resume=False, device="cpu")
    pairs = dict(zip(a, a[1:]))
    assert (pairs["--moe-score"], pairs["--moe-balance"], pairs["--moe-bias-update-rate"]) == \
        ("sigmoid", "loss_free", "0.001")
    for bad, key in (("moe.shared_experts=-1", "moe.shared_experts"), ("moe.expert_ffn_dim=0", "moe.expert_ffn_dim"),
                     ("moe.balance=loss_free", "moe.balance: loss_free balances without an auxiliary loss"),
                     ("moe.score=sigmoid", "moe.score=sigmoid: estimator 'sparsemixer' is defined on the softmax")):
        with pytest.raises(ValueError, match=key):
            recipes.load(REPO / "recipes/tiny.yaml", [bad])


def test_precision_flags():
    """fp16: auto -> --fp16 on CUDA only; train.bf16 -> --bf16 on either device and never with --fp16 or a scaler."""
    def flags(overrides: list[str], device: str) -> list[str]:
        recipe = recipes.load(REPO / "recipes/wmt14_switch.yaml", overrides)  # it sets fp16 init scale and window
        a = launch.fairseq_argv(recipe, Path("R"), Path("D"), resume=False, device=device)
        return [x for x in a if x in ("--cpu", "--fp16", "--bf16", "--fp16-init-scale", "--fp16-scale-window")]

    assert flags([], "cpu") == ["--cpu"]
    assert flags([], "cuda") == ["--fp16", "--fp16-init-scale", "--fp16-scale-window"]
    bf16 = ["train.bf16=true", "train.fp16_init_scale=null", "train.fp16_scale_window=null"]
    assert flags(bf16, "cuda") == ["--bf16"]
    assert flags(bf16, "cpu") == ["--cpu", "--bf16"]
    assert flags(bf16 + ["train.fp16=false"], "cuda") == ["--bf16"]


def test_engine_command_single_and_torchrun():
    single = process.engine_command("fairseq_cli.train", ["D", "--cpu"], process.Distributed(), python="PY")
    assert single == ["PY", "-P", "-m", "smx.engine.entry", "fairseq_cli.train", "D", "--cpu"]
    dist = process.Distributed(nproc_per_node=2, nnodes=2, node_rank=1, master_addr="h", master_port=1234)
    cmd = process.engine_command("fairseq_cli.train", ["D"], dist, python="PY")
    assert cmd == ["PY", "-P", "-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "1",
                   "--master-addr", "h", "--master-port", "1234", "-m", "smx.engine.entry", "fairseq_cli.train", "D"]
    assert dist.world_size == 4


def test_engine_entry_turns_torchrun_env_into_fairseq_args():
    from smx.engine.entry import distributed_args

    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert distributed_args(env) == ["--distributed-init-method", "env://", "--distributed-rank", "3",
                                     "--device-id", "1", "--distributed-world-size", "4", "--distributed-no-spawn"]
    with pytest.raises(SystemExit, match="torchrun"):
        distributed_args({})


@pytest.mark.parametrize("kwargs, match", [
    ({"nproc_per_node": 0}, "--nproc-per-node 0"),
    ({"nnodes": 2, "node_rank": 2}, "--node-rank 2"),
    ({"master_port": 70000}, "--master-port 70000"),
])
def test_distributed_options_checked(kwargs, match):
    from smx.errors import UserError

    with pytest.raises(UserError, match=match):
        process.Distributed(**kwargs)


def test_cpu_threads_environment():
    recipe = recipes.load(REPO / "recipes/tiny.yaml")
    assert process.train_env_additions(recipe.train.cpu_threads, "cpu")["OMP_NUM_THREADS"] == "1"
    assert process.train_env_additions(recipe.train.cpu_threads, "cpu")["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"
    assert "OMP_NUM_THREADS" not in process.train_env_additions(recipe.train.cpu_threads, "cuda")
