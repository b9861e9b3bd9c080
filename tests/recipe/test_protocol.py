"""router.protocol: controlled (per-estimator options, nothing else per arm) and reference (each arm's own settings)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smx.recipe import protocol
from smx.recipe.protocol import LOSS_FREE_VARIANT, arm_settings
from smx.recipe import recipes
from smx.cli import run
from smx.errors import UserError
from smx.estimators import names as estimator_names

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "recipes" / "tiny.yaml"


def load(overrides=(), estimator=None, text=None):
    notes: list[str] = []
    if text is None:
        return recipes.load(TINY, list(overrides), estimator=estimator, notes=notes), notes
    return recipes.loads(text, list(overrides), estimator=estimator, notes=notes), notes


def test_controlled_is_the_default_and_changes_nothing_per_arm():
    a, notes = load(estimator="topk")
    b, _ = load(estimator="sparsemixer")
    assert a.router.protocol == b.router.protocol == "controlled" and notes == []
    assert a.moe == b.moe and a.router.options == b.router.options == {}


def test_controlled_per_estimator_options_go_to_their_arm_only():
    sets = ["router.per_estimator.sparsemixer_v2.jitter_eps=0.01", "router.options.jitter_eps=0.05"]
    v2, _ = load(sets, estimator="sparsemixer_v2")
    v1, _ = load(sets, estimator="sparsemixer")
    assert v2.router.options == {"jitter_eps": 0.01}  # its own entry wins over the shared option
    assert v1.router.options == {"jitter_eps": 0.05}
    assert v1.moe == v2.moe
    again = recipes.loads(recipes.dump(v2))  # the resolved recipe.yaml resolves to itself
    assert again == v2


@pytest.mark.parametrize("override,message", [
    ("router.per_estimator.sparsmixer.jitter_eps=0.1",
     "router.per_estimator.sparsmixer: unknown estimator; did you mean 'sparsemixer'?"),
    ("router.per_estimator.topk.tau=2", "router.per_estimator.topk.tau: unknown option for estimator 'topk'"),
    ("router.per_estimator.topk=3", "router.per_estimator.topk: expected a mapping of options"),
])
def test_bad_per_estimator_entries_are_one_line_problems(override, message):
    with pytest.raises(UserError) as info:
        load([override])
    lines = str(info.value).splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_per_estimator_under_reference_is_refused():
    with pytest.raises(UserError, match="per_estimator: not used under protocol reference"):
        load(["router.protocol=reference", "router.per_estimator.topk.jitter_eps=0.1"])


@pytest.mark.parametrize("name", estimator_names())
def test_reference_gives_each_arm_its_reference_settings(name):
    k = 1
    recipe, notes = load(["router.protocol=reference"], estimator=name)
    ref = protocol.reference_for(name, k)
    assert recipe.router.options == ref.options
    for _, key in protocol.ARM_KEYS[1:]:
        assert getattr(recipe.moe, key) == getattr(ref, key), key
    assert recipes.loads(recipes.dump(recipe)) == recipe  # idempotent: recipe.yaml loads back to the same arm
    # model, data, optimizer, schedule, batch, k, updates and balance weight stay the recipe's
    base, _ = load(estimator=name)
    assert (recipe.model, recipe.data, recipe.optim, recipe.train, recipe.moe.k, recipe.moe.balance_weight) == \
        (base.model, base.data, base.optim, base.train, base.moe.k, base.moe.balance_weight)
    assert all(n.startswith("router.protocol=reference: ") for n in notes)


def test_reference_values_of_the_sparsemixer_and_switch_arms():
    sm, notes = load(["router.protocol=reference"], estimator="sparsemixer")
    assert (sm.moe.router_bias, sm.moe.output_scale, sm.moe.balance_source, sm.moe.balance_reduction) == \
        (True, True, "reference", "batch_sum")
    assert sm.router.options == {"jitter_eps": 0.1}
    assert "router.protocol=reference: moe.output_scale=True (recipe: False)" in notes
    tk, _ = load(["router.protocol=reference"], estimator="topk")
    assert (tk.moe.router_bias, tk.moe.output_scale, tk.moe.balance_reduction, tk.router.options) == \
        (True, False, "batch_sum", {"jitter_eps": 0.1, "normalize": False})
    v2, _ = load(["router.protocol=reference", "moe.k=2"], estimator="sparsemixer_v2")
    assert (v2.moe.router_bias, v2.moe.balance_source, v2.moe.balance_reduction, v2.router.options) == \
        (False, "reference", "token_mean", {"jitter_eps": 0.01})
    tk2, _ = load(["router.protocol=reference", "moe.k=2"], estimator="topk")
    assert tk2.router.options == {"jitter_eps": 0.0, "normalize": True}  # Mixtral-style top-2


def test_reference_overrides_an_explicit_recipe_value_and_says_so():
    recipe, notes = load(["router.protocol=reference", "moe.router_bias=false", "router.options.jitter_eps=0.3"],
                         estimator="sparsemixer")
    assert recipe.moe.router_bias is True and recipe.router.options == {"jitter_eps": 0.1}
    assert any("moe.router_bias=True (recipe: False)" in n for n in notes)
    assert any("router.options={'jitter_eps': 0.1}" in n and "recipe: {'jitter_eps': 0.3}" in n for n in notes)


def test_arm_settings_record_protocol_reference_and_differences():
    recipe, _ = load(["router.protocol=reference"], estimator="sparsemixer")
    arm = protocol.arm_settings(recipe)
    assert arm["protocol"] == "reference" and arm["estimator"] == "sparsemixer"
    assert arm["moe.balance_reduction"] == "batch_sum" and arm["router.options"] == {"jitter_eps": 0.1}
    assert "microsoft/SparseMixer" in arm["reference"] and arm["differences"]
    controlled, _ = load(estimator="sparsemixer")
    assert "reference" not in protocol.arm_settings(controlled)


def test_recipe_show_prints_the_resolved_arm(capsys):
    assert run(["recipe", "show", str(REPO / "recipes" / "wmt14_switch.yaml"), "--estimator", "sparsemixer"]) == 0
    out = capsys.readouterr().out
    assert "arm: sparsemixer under protocol reference" in out
    for text in ("moe.output_scale", "batch_sum", "differs from the reference"):
        assert text in out


def test_effective_balance_weights_of_the_shipped_recipes():
    """README "Fidelity": per-token weight on each layer's balance loss."""
    assert protocol.effective_balance_weight(0.01, "token_mean", 6, 7000) == pytest.approx(0.01 / 6)
    assert protocol.effective_balance_weight(0.01, "batch_sum", 6, 7000) == pytest.approx(0.01 / 7000)


def test_meta_arm_names_the_loss_free_variant_and_the_new_moe_parts():
    plain = arm_settings(recipes.load(REPO / "recipes" / "tiny.yaml"))
    assert "moe.balance" not in plain and "loss_free_variant" not in plain  # unchanged for today's recipes
    arm = arm_settings(recipes.load(REPO / "recipes" / "tiny.yaml", [
        "router.estimator=topk", "moe.balance=loss_free", "moe.balance_weight=0", "moe.shared_experts=1"]))
    assert arm["moe.balance"] == "loss_free" and arm["moe.bias_update_rate"] == 1e-3 and arm["moe.shared_experts"] == 1
    assert arm["loss_free_variant"] == LOSS_FREE_VARIANT and "2408.15664" in LOSS_FREE_VARIANT


def test_meta_arm_names_the_global_loss_and_remoe_rules():
    arm = arm_settings(recipes.load(TINY, ["router.estimator=topk", "moe.balance=global_loss"]))
    assert arm["moe.balance"] == "global_loss" and arm["global_loss_variant"] == protocol.GLOBAL_LOSS_VARIANT
    assert "2501.11873" in protocol.GLOBAL_LOSS_VARIANT and "remoe_rule" not in arm
    remoe = arm_settings(recipes.load(TINY, estimator="remoe"))
    assert remoe["remoe_rule"] == protocol.REMOE_RULE and "ReLU" in protocol.REMOE_RULE


@pytest.mark.parametrize("overrides, message", [
    (["moe.balance=global_loss", "moe.balance_weight=0"], "moe.balance: global_loss changes the balance loss's f"),
    (["router.estimator=remoe", "moe.score=sigmoid"], "router.estimator: moe.score=sigmoid: estimator 'remoe' gates "
                                                      "with ReLU(z)"),
    (["router.estimator=remoe", "moe.balance=global_loss"], "router.estimator: moe.balance=global_loss: estimator "
                                                             "'remoe' balances through its adaptive L1 penalty"),
    (["router.estimator=remoe", "moe.k=4"], "targets the sparsity 1 - k/E; moe.k=4"),
    (["router.estimator=remoe", "router.options.l1_multiplier=0.9"], "l1_multiplier must be a number > 1"),
])
def test_meaningless_global_loss_and_remoe_recipes_are_one_line_problems(overrides, message):
    with pytest.raises(UserError) as info:
        load(overrides)
    lines = str(info.value).splitlines()
    assert len(lines) == 1 and message in lines[0], lines
