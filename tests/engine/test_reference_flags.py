"""recipes/wmt14_switch.yaml against the SparseMixer example's training command, flag by flag.

REFERENCE is the fairseq-train command of microsoft/SparseMixer example/run_moe.sh (EXPERTS=4, one GPU so
UPDATE_FREQ=16/1), written here as data. Every reference flag is either reproduced with the same value (SAME), mapped
to smx's name for the same thing (RENAMED, each with a check), or a named difference with its reason (DIFFERENCES).
The test fails when a flag is unaccounted for, a SAME value drifts, or a listed difference no longer differs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from smx.engine import argv as launch
from smx.recipe import recipes

REPO = Path(__file__).resolve().parents[2]

REFERENCE = {  # flag -> value (True: a switch)
    "--num-workers": "8", "--ddp-backend": "no_c10d", "--user-dir": "moe", "--task": "translation_switch",
    "--load-balancing": True, "--criterion": "label_smoothed_cross_entropy", "--label-smoothing": "0.1",
    "--arch": "switch_transformer", "--share-all-embeddings": True, "--source-lang": "en", "--target-lang": "de",
    "--optimizer": "adam", "--adam-betas": "(0.9,0.98)", "--clip-norm": "0.0", "--lr-scheduler": "inverse_sqrt",
    "--warmup-init-lr": "1e-07", "--warmup-updates": "8000", "--max-update": "400000", "--lr": "7e-4",
    "--max-tokens": "8192", "--update-freq": "16", "--weight-decay": "0", "--dropout": "0.1",
    "--activation-dropout": "0.1", "--attention-dropout": "0.1", "--fp16": True, "--fp16-init-scale": "4",
    "--fp16-scale-window": "256", "--log-format": "simple", "--log-interval": "100",
    "--skip-invalid-size-inputs-valid-test": True, "--best-checkpoint-metric": "loss", "--save-interval": "10",
    "--encoder-layers": "6", "--decoder-layers": "6", "--save-dir": "./output-4",
    "--num-experts": "4", "--jitter-eps": "0.1", "--load-balancing-alpha": "0.01", "--router": "SparseMixer",
}
SAME = ["--num-workers", "--ddp-backend", "--label-smoothing", "--share-all-embeddings", "--source-lang",
        "--target-lang", "--optimizer", "--adam-betas", "--clip-norm", "--lr-scheduler", "--warmup-init-lr",
        "--warmup-updates", "--max-update", "--lr", "--max-tokens", "--update-freq", "--weight-decay", "--dropout",
        "--activation-dropout", "--attention-dropout", "--fp16", "--fp16-init-scale", "--fp16-scale-window",
        "--log-interval", "--skip-invalid-size-inputs-valid-test", "--best-checkpoint-metric"]
ROUTERS = {"SparseMixer": "sparsemixer", "SwitchGate": "topk"}
# reference flag -> (smx flag, why it is not the same flag)
DIFFERENCES = {
    "--log-format": ("--log-format", "json: smx parses the engine log into metrics.jsonl"),
    "--save-interval": ("--save-interval-updates", "smx saves every 1000 updates (plus checkpoint_last / best), "
                        "not every 10 epochs: runs resume after a preemption and the valid curve is dense"),
    "--save-dir": ("--save-dir", "the run directory's checkpoints/"),
    "--user-dir": ("--user-dir", "smx's plugin (smx/fairseq_plugin) instead of the example's moe/"),
}
# smx flags the reference does not pass, and why they do not change its training
EXTRA = {
    "--validate-interval-updates": "smx also validates every 1000 updates (the reference: once per epoch), for the "
                                   "updates-to-target curve; validation does not change training",
    "--seed": "fairseq's default seed is 1, as the recipe's",
}


def argv_of(estimator: str) -> dict:
    recipe = recipes.load(REPO / "recipes" / "wmt14_switch.yaml", estimator=estimator)
    a = launch.fairseq_argv(recipe, Path("RUN"), Path("DATA"), resume=False, device="cuda")
    flags, i = {}, 1
    while i < len(a):
        if i + 1 < len(a) and not a[i + 1].startswith("--"):
            flags[a[i]], i = a[i + 1], i + 2
        else:
            flags[a[i]], i = True, i + 1
    return flags


def same_value(a, b) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if a.startswith("("):
        return [float(x) for x in a.strip("()").split(",")] == [float(x) for x in b.strip("()").split(",")]
    try:
        return math.isclose(float(a), float(b))
    except ValueError:
        return a == b


def renamed_checks(ref_router: str, smx: dict) -> dict:
    """Reference flags smx spells differently, each with what smx passes for the same setting."""
    options = json.loads(smx["--moe-estimator-options"])
    return {
        "--num-experts": smx["--moe-num-experts"] == "4",
        "--router": smx["--moe-estimator"] == ROUTERS[ref_router],
        "--jitter-eps": options.get("jitter_eps") == 0.1,
        "--load-balancing-alpha": float(smx["--moe-balance-weight"]) == 0.01,
        # --load-balancing: the balance loss is on, added to the SUMMED loss and summed over layers (_get_loss)
        "--load-balancing": float(smx["--moe-balance-weight"]) > 0 and smx["--moe-balance-reduction"] == "batch_sum",
        # the example's task only adds the balance loss in _get_loss; smx does it in its criterion
        "--task": smx["--task"] == "translation",
        "--criterion": smx["--criterion"] == "smx_moe_label_smoothed_cross_entropy" and "--label-smoothing" in smx,
        # switch_transformer = transformer base with MoE in every layer i with i % 2 == 0 (use_switch)
        "--arch": smx["--arch"] == "smx_switch_transformer_base"
        and smx["--moe-encoder-layers"] == smx["--moe-decoder-layers"] == "0,2,4",
        "--encoder-layers": "--encoder-layers" not in smx,  # the base arch's own 6 (ARCH_LAYERS)
        "--decoder-layers": "--decoder-layers" not in smx,
    }


@pytest.mark.parametrize("ref_router", ["SparseMixer", "SwitchGate"])
def test_wmt14_recipe_reproduces_run_moe_sh(ref_router):
    smx = argv_of(ROUTERS[ref_router])
    renamed = renamed_checks(ref_router, smx)
    unaccounted = set(REFERENCE) - set(SAME) - set(renamed) - set(DIFFERENCES)
    assert not unaccounted, f"reference flags neither reproduced nor listed as a difference: {sorted(unaccounted)}"
    for flag in SAME:
        assert flag in smx and same_value(REFERENCE[flag], smx[flag]), (flag, REFERENCE[flag], smx.get(flag))
    assert [f for f, ok in renamed.items() if not ok] == []
    for flag, (smx_flag, _why) in DIFFERENCES.items():  # a difference that is no longer one must leave the list
        assert smx_flag in smx and not (smx_flag == flag and same_value(REFERENCE[flag], smx[smx_flag])), flag
    for flag in EXTRA:
        assert flag in smx and flag not in REFERENCE


def test_the_reference_arms_get_the_example_router():
    """Router bias (nn.Linear gating_network), omega for SparseMixer only, balance inputs per router."""
    sm, tk = argv_of("sparsemixer"), argv_of("topk")
    assert "--moe-router-bias" in sm and "--moe-router-bias" in tk
    assert "--moe-output-scale" in sm and "--moe-output-scale" not in tk
    assert sm["--moe-balance-source"] == "reference" and tk["--moe-balance-source"] == "routed"


def test_base_arch_is_the_reference_transformer_base():
    """The example's switch_transformer builds on fairseq's base_architecture, as smx_switch_transformer_base."""
    from argparse import Namespace

    from smx.fairseq_plugin.translation import smx_switch_transformer_base

    args = Namespace()
    smx_switch_transformer_base(args)
    assert (args.encoder_embed_dim, args.encoder_ffn_embed_dim, args.encoder_attention_heads, args.encoder_layers,
            args.decoder_layers, args.encoder_normalize_before) == (512, 2048, 8, 6, 6, False)
