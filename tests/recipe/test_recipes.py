"""smx.recipe.recipes: loading, resolution, dumping, and every kind of recipe error (collected, one line each)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smx.recipe import recipes
from smx.errors import UserError
from smx.estimators import names as estimator_names

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))

BASE = """\
name: t
task: translation
seed: 3
data:
  dataset: synthetic-mt
model:
  arch: tiny
moe:
  num_experts: 4
  k: 1
  encoder_layers: [0]
  decoder_layers: [0]
router:
  estimator: sparsemixer
  options: {jitter_eps: 0.1}
optim:
  lr: 1e-3
train:
  max_update: 10
"""


def problems(text: str, overrides: list[str] = ()) -> list[str]:
    with pytest.raises(UserError) as info:
        recipes.loads(text, overrides, source="r.yaml")
    lines = str(info.value).splitlines()
    assert all(line.startswith("r.yaml: ") for line in lines), lines
    return [line[len("r.yaml: "):] for line in lines]


def test_shipped_recipes_exist():
    names = {p.stem for p in RECIPES}
    assert {"wmt14_switch", "lm_switch", "ding_switch", "multi30k_switch", "shakespeare_lm", "tiny", "tiny_lm"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_loads_and_round_trips(path: Path):
    recipe = recipes.load(path)
    assert recipe.name == path.stem
    assert recipes.loads(recipes.dump(recipe)) == recipe
    text = path.read_text()
    assert text.startswith("#"), "a recipe opens with a comment block"
    assert "smx train recipes/" + path.name in text, "the comment block gives the exact command"
    assert "Required keys" in text and "overridden" in text


def test_tiny_recipe_runs_with_every_estimator():
    for name in estimator_names():
        assert recipes.load(REPO / "recipes/tiny.yaml", estimator=name).router.estimator == name


def test_values_and_defaults():
    r = recipes.loads(BASE)
    assert r.seed == 3 and r.optim.lr == 1e-3 and isinstance(r.optim.lr, float)  # 1e-3 without a dot is a float
    assert r.moe.encoder_layers == (0,) and r.optim.betas == (0.9, 0.98)
    assert r.router.options == {"jitter_eps": 0.1}
    assert r.train.fp16 == "auto" and r.moe.capacity_factor is None and r.eval.beam == 4


def test_dump_loads_back_equal_and_is_explicit():
    r = recipes.loads(BASE, ["moe.capacity_factor=1.25", "optim.betas=[0.9, 0.999]", "train.fp16=false"])
    text = recipes.dump(r)
    assert "capacity_factor: 1.25" in text and "warmup_init_lr:" in text
    assert recipes.loads(text) == r


def test_overrides():
    r = recipes.loads(BASE, ["moe.k=1", "seed=7", "router.options.jitter_eps=0.05", "moe.decoder_layers=[]",
                             "data.dir=null", "router.estimator=topk", "router.options={}"])
    assert (r.seed, r.router.estimator, r.router.options, r.moe.decoder_layers) == (7, "topk", {}, ())


def test_override_unknown_key_hint_and_bad_syntax():
    p = problems(BASE, ["moe.num_expert=8", "train.max_update", "optim.lr=[1"])
    assert p[0] == "--set moe.num_expert: unknown key; did you mean 'moe.num_experts'?"
    assert p[1].startswith("--set train.max_update: expected KEY=VALUE")
    assert p[2].startswith("--set optim.lr=[1: YAML syntax error")


def test_unknown_keys_with_hints():
    p = problems(BASE.replace("  k: 1", "  k: 1\n  num_expert: 2").replace("seed: 3", "sede: 3"))
    assert "sede: unknown key; did you mean 'seed'?" in p
    assert "moe.num_expert: unknown key; did you mean 'num_experts'?" in p


def test_wrong_types_named():
    p = problems(BASE.replace("k: 1", "k: two").replace("lr: 1e-3", "lr: fast").replace(
        "max_update: 10", "max_update: 10\n  fp16: maybe"))
    assert "moe.k: expected an integer, got str 'two'" in p
    assert "optim.lr: expected a number, got str 'fast'" in p
    assert "train.fp16: expected true or false or one of 'auto', got str 'maybe'" in p
    assert len(p) == 3  # the bad k is not also reported by range checks


def test_bool_is_not_a_number():
    assert problems(BASE.replace("k: 1", "k: true")) == ["moe.k: expected an integer, got bool True"]


def test_out_of_range_values_all_collected():
    p = problems(BASE.replace("k: 1", "k: 5").replace("lr: 1e-3", "lr: -1e-3").replace(
        "arch: tiny", "arch: tiny\n  dropout: 1.5"))
    assert "moe.k: 5 > moe.num_experts=4" in p
    assert "optim.lr: -0.001 must be > 0" in p
    assert "model.dropout: 1.5 must be in [0, 1)" in p
    assert len(p) == 3


def test_layer_index_beyond_arch():
    p = problems(BASE.replace("encoder_layers: [0]", "encoder_layers: [0, 2]"))
    assert p == ["moe.encoder_layers: layer 2 does not exist (the 2 layers of model.arch=tiny; indices start at 0)"]


def test_never_stopping_run_refused():
    assert problems(BASE.replace("max_update: 10", "max_update: 0")) == [
        "train.max_update: set train.max_update, train.max_epoch or train.max_wall_minutes (all 0: the run would never "
        "stop)"]


def test_unknown_estimator_and_option():
    p = problems(BASE.replace("estimator: sparsemixer", "estimator: sparsemixr"))
    assert len(p) == 1 and p[0].startswith("router.estimator: unknown estimator 'sparsemixr'; did you mean "
                                           "'sparsemixer'? (choices: ")
    p = problems(BASE.replace("{jitter_eps: 0.1}", "{jitter_epsilon: 0.1}"))
    assert p == ["router.options.jitter_epsilon: unknown option for estimator 'sparsemixer'; did you mean "
                 "'jitter_eps'? (valid options: jitter_eps)"]


def test_estimator_option_value_and_k_checked_by_estimator():
    assert problems(BASE.replace("jitter_eps: 0.1", "jitter_eps: -1"))[0].startswith("router.options: ")
    p = problems(BASE.replace("k: 1", "k: 2"))
    assert len(p) == 1 and p[0].startswith("router.estimator: ") and "top-1" in p[0]


def test_constant_gate_top1_refused():
    p = problems(BASE, ["router.estimator=topk", "router.options={normalize: true}"])
    assert len(p) == 1 and "constant" in p[0] and "moe.k=1" in p[0]
    recipes.loads(BASE, ["router.estimator=topk", "router.options={normalize: true}", "moe.k=2"])


def test_duplicate_key_is_an_error():
    p = problems(BASE.replace("  lr: 1e-3", "  lr: 1e-3\n  lr: 2e-3"))
    assert p == ["optim.lr: duplicate key (line 18; first set on line 17)"]


def test_malformed_yaml():
    p = problems("name: t\ntask: [translation\n")
    assert len(p) == 1 and p[0].startswith("YAML syntax error: line ")
    assert problems("- a\n- b\n") == ["top level: expected a mapping (name, task, data, model, moe, ...), got list"]


def test_missing_required_and_task_specific_keys():
    assert problems("task: translation\ntrain: {max_update: 1}\n") == ["name: missing (required)",
                                                                      "data.dataset: missing (required)"]
    lm = BASE.replace("task: translation", "task: language_modeling").replace("dataset: synthetic-mt",
                                                                               "dataset: synthetic-lm")
    p = problems(lm)
    assert p == ["moe.encoder_layers: not used by task language_modeling (remove it)"]


def test_unknown_dataset_and_task_mismatch():
    assert problems(BASE.replace("synthetic-mt", "synthetic-mx"))[0].startswith(
        "data.dataset: unknown dataset 'synthetic-mx'; did you mean 'synthetic-mt'?")
    assert problems(BASE.replace("synthetic-mt", "synthetic-lm")) == [
        "data.dataset: synthetic-lm is a language_modeling dataset but task is translation"]


def test_estimator_switch_drops_options_it_does_not_take():
    notes: list[str] = []
    r = recipes.loads(BASE, estimator="straight_through", notes=notes)
    assert r.router.options == {} and notes == [
        "router.options.jitter_eps=0.1 dropped: not an option of estimator 'straight_through'"]
    # --set is strict instead
    assert problems(BASE, ["router.estimator=straight_through"])[0].startswith("router.options.jitter_eps: unknown")
    # an option given explicitly with --set is a request, never dropped (issue 15)
    with pytest.raises(UserError, match=r"--set router.options.jitter_eps: not an option of estimator "
                                        r"'straight_through' \(--estimator\); its options: deterministic"):
        recipes.loads(BASE, ["router.options.jitter_eps=0.2"], estimator="straight_through")


def test_set_of_a_whole_section_is_named_as_such():
    assert problems(BASE, ["moe=3"]) == ["--set moe: moe is a section, not a key; set one of its keys, e.g. "
                                         "moe.num_experts, moe.k, moe.encoder_layers, ..."]
    assert problems(BASE, ["train=null"])[0].startswith("--set train: train is a section, not a key")


def test_file_errors(tmp_path: Path):
    with pytest.raises(UserError, match="recipe file not found"):
        recipes.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE.replace("k: 1", "k: 9"))
    with pytest.raises(UserError) as info:
        recipes.load(bad)
    assert str(info.value) == f"{bad}: moe.k: 9 > moe.num_experts=4"


def test_sections_reject_bad_values_directly():
    from smx.recipe.schema import MoESection

    with pytest.raises(ValueError, match="k: 3 > moe.num_experts=2"):
        MoESection(num_experts=2, k=3)
