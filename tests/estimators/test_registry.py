from dataclasses import replace

import pytest
import torch

from smx import estimators

ALL = ["topk", "straight_through", "sparsemixer_1st", "sparsemixer", "sparsemixer_inf", "sparsemixer_v2", "default_moe",
       "densemixer", "remoe"]


def test_names_are_the_documented_set():
    assert estimators.names() == ALL


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="unknown estimator 'sparsmixer'.*sparsemixer_v2"):
        estimators.get("sparsmixer")


def test_unknown_option_lists_valid_options():
    with pytest.raises(ValueError, match="unknown option.*tau.*valid options: jitter_eps"):
        estimators.get("sparsemixer", tau=2.0)


def test_reference_defaults():
    assert estimators.get("sparsemixer").jitter_eps == 0.1
    assert estimators.get("sparsemixer_1st").jitter_eps == 0.1
    assert estimators.get("sparsemixer_inf").jitter_eps == 0.1
    assert estimators.get("sparsemixer_v2").jitter_eps == 0.01
    assert estimators.get("topk").jitter_eps == 0.0
    assert estimators.get("default_moe").beta == 0.9


def test_every_masking_or_jittering_estimator_calls_it_jitter_eps():
    for name in ALL:
        opts = estimators.REGISTRY[name].option_names()
        if name not in ("straight_through", "densemixer", "remoe"):  # neither masks nor jitters
            assert "jitter_eps" in opts, name


@pytest.mark.parametrize("name,opts", [("sparsemixer", {"jitter_eps": -1}), ("straight_through", {"tau": 0}),
                                       ("default_moe", {"beta": 1.5}), ("topk", {"normalize": "yes"})])
def test_bad_option_values(name, opts):
    with pytest.raises(ValueError, match=next(iter(opts))):
        estimators.get(name, **opts)


def test_dense_flags():
    assert [n for n in ALL if estimators.get(n).dense] == ["straight_through", "densemixer"]
    assert [n for n in ALL if estimators.get(n).uses_default_vectors] == ["default_moe"]


def test_top1_only_estimators_refuse_k2():
    for name in ("sparsemixer", "sparsemixer_1st", "sparsemixer_inf"):
        with pytest.raises(ValueError, match="top-1"):
            estimators.get(name).validate(2, 4)
    estimators.get("sparsemixer_v2").validate(2, 4)
    with pytest.raises(ValueError, match="moe.k=5"):
        estimators.get("topk").validate(5, 4)


def test_constant_gate_top1_is_refused():
    with pytest.raises(ValueError, match="constant"):
        estimators.get("topk", normalize=True).validate(1, 4)
    with pytest.raises(ValueError, match="constant"):
        estimators.get("default_moe", normalize=True).validate(1, 4)
    estimators.get("topk", normalize=True).validate(2, 4)


@pytest.mark.parametrize("name,k", [("sparsemixer", 1), ("sparsemixer_1st", 1), ("sparsemixer_inf", 1),
                                    ("sparsemixer_v2", 1), ("sparsemixer_v2", 2)])
def test_masked_family_with_zero_eps_is_refused_as_a_constant_gate(name, k):
    with pytest.raises(ValueError, match=f"estimator '{name}' with jitter_eps=0 .*constant 1.*no task gradient"):
        estimators.get(name, jitter_eps=0.0).validate(k, 4)
    estimators.get(name, jitter_eps=1e-3).validate(k, 4)


@pytest.mark.parametrize("name", ALL)
def test_shapes_dtypes_and_no_inplace(name):
    k = 2 if name in ("topk", "straight_through", "sparsemixer_v2", "default_moe", "densemixer") else 1
    logits = torch.randn(10, 6, dtype=torch.bfloat16)
    before = logits.clone()
    r = estimators.get(name)(logits, k=k, training=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits, before)
    if estimators.REGISTRY[name].variable_k:  # every expert is a column; `active` says which ones route
        k = 6
        assert r.active.shape == (10, 6) and torch.equal(r.active, r.gate > 0)
        r = replace(r, probs=torch.where(r.active.any(1, keepdim=True), r.probs, 1 / 6))  # all-zero rows: 0
    assert r.expert_index.shape == (10, k) and r.expert_index.dtype == torch.int64
    assert r.gate.shape == (10, k) and r.gate.dtype == torch.float32
    assert r.probs.dtype == torch.float32 and torch.allclose(r.probs.sum(-1), torch.ones(10))
    # k distinct experts per token
    assert all(len(set(row)) == k for row in r.expert_index.tolist())


@pytest.mark.parametrize("name", ALL)
def test_generator_reproduces_and_eval_is_deterministic(name):
    logits = torch.randn(50, 5) * 0.05 + 1.0  # near ties: sampling matters
    est = estimators.get(name)
    a = est(logits, k=1, training=True, generator=torch.Generator().manual_seed(3))
    b = est(logits, k=1, training=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.expert_index, b.expert_index) and torch.equal(a.gate, b.gate)
    e1 = est(logits, k=1, training=False, generator=torch.Generator().manual_seed(1))
    e2 = est(logits, k=1, training=False, generator=torch.Generator().manual_seed(2))
    assert torch.equal(e1.expert_index, e2.expert_index) and torch.equal(e1.gate, e2.gate)
    if est.variable_k:  # ReMoE: every expert is a column, the largest gate on the largest logit
        assert torch.equal(e1.gate.argmax(-1), logits.argmax(-1))
    else:
        assert torch.equal(e1.expert_index[:, 0], logits.argmax(-1))
