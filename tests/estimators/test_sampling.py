"""Forward scales and sampling frequencies take the documented values (statistical tests with fixed seeds)."""

import itertools
import math

import pytest
import torch

from smx import estimators
from smx.estimators.base import keep_mask, masked_softmax

N = 40000


def binomial_ok(count, n, p, sigmas=5.0):
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def draws(name, logits, k=1, seed=0, **opts):
    est = estimators.get(name, **opts)
    r = est(logits.repeat(N, 1), k=k, training=True, generator=torch.Generator().manual_seed(seed))
    return r


def scales(r, logits, eps):
    p = masked_softmax(logits.repeat(N, 1), keep_mask(logits.repeat(N, 1), eps))
    return r.gate[:, 0] / p.gather(1, r.expert_index[:, :1])[:, 0]


LOGITS = torch.tensor([[1.0, 0.95, 0.9, 0.2]])  # with eps 0.1: experts 0, 1, 2 kept, 3 masked


@pytest.mark.parametrize("name,eps", [("sparsemixer", 0.1), ("sparsemixer_1st", 0.1), ("sparsemixer_inf", 0.1),
                                      ("sparsemixer_v2", 0.1)])
def test_masked_sampling_frequencies(name, eps):
    r = draws(name, LOGITS, jitter_eps=eps)
    p = masked_softmax(LOGITS, keep_mask(LOGITS, eps))[0]
    assert p[3] == 0
    counts = torch.bincount(r.expert_index[:, 0], minlength=4)
    assert counts[3] == 0
    for i in range(3):
        assert binomial_ok(counts[i].item(), N, p[i].item()), (i, counts[i].item(), N * p[i].item())


def test_sparsemixer_midpoint_scale():
    r = draws("sparsemixer", LOGITS, jitter_eps=0.1)
    s = scales(r, LOGITS, 0.1)
    is_argmax = r.expert_index[:, 0] == 0
    assert torch.allclose(s[is_argmax], torch.ones(1))
    other = s[~is_argmax]
    assert torch.all(torch.isclose(other, torch.tensor(1.0)) | torch.isclose(other, torch.tensor(0.5)))
    assert binomial_ok((other == 1).sum().item(), len(other), 0.5)


def test_sparsemixer_1st_scale_is_one():
    s = scales(draws("sparsemixer_1st", LOGITS, jitter_eps=0.1), LOGITS, 0.1)
    assert torch.allclose(s, torch.ones_like(s))


def test_sparsemixer_inf_scale_is_uniform_off_the_half():
    r = draws("sparsemixer_inf", LOGITS, jitter_eps=0.1)
    s = scales(r, LOGITS, 0.1)
    is_argmax = r.expert_index[:, 0] == 0
    assert torch.allclose(s[is_argmax], torch.ones(1))
    other = s[~is_argmax]
    ones = (other > 1 - 1e-6)
    assert binomial_ok(ones.sum().item(), len(other), 0.5)
    u = other[~ones]
    assert u.min() >= 0 and u.max() < 1
    n = len(u)
    assert abs(u.mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    for q in (0.25, 0.5, 0.75):  # uniform quantiles
        assert binomial_ok((u < q).sum().item(), n, q)


def test_sparsemixer_v2_third_order_scale_both_stages():
    r = draws("sparsemixer_v2", LOGITS, k=2, jitter_eps=0.1)
    z = LOGITS.repeat(N, 1)
    chosen = torch.zeros_like(z, dtype=torch.bool)
    rows = torch.arange(N)
    for stage in range(2):
        keep = keep_mask(z, 0.1, excluded=chosen if stage else None)
        p = masked_softmax(z, keep)
        d = r.expert_index[:, stage]
        s = r.gate[:, stage] / p[rows, d]
        is_argmax = d == z.masked_fill(~keep, float("-inf")).argmax(-1)
        assert torch.allclose(s[is_argmax], torch.ones(1))
        other = s[~is_argmax]
        assert torch.all(torch.isclose(other, torch.tensor(1.0)) | torch.isclose(other, torch.tensor(1 / 3)))
        assert (other > 0.5).any() and (other < 0.5).any()
        assert binomial_ok((other > 0.5).sum().item(), len(other), 0.25)
        chosen[rows, d] = True
    assert torch.all(r.expert_index[:, 0] != r.expert_index[:, 1])


def test_v2_sampling_without_replacement_frequencies():
    z = torch.tensor([[0.3, 0.1, -0.2]])
    r = draws("sparsemixer_v2", z, k=2, jitter_eps=1e6)
    p = torch.softmax(z, -1)[0]
    pairs = [tuple(row) for row in r.expert_index.tolist()]
    for i, j in itertools.permutations(range(3), 2):
        expected = (p[i] * p[j] / (1 - p[i])).item()
        assert binomial_ok(pairs.count((i, j)), N, expected), (i, j)


def test_straight_through_samples_softmax_whatever_tau():
    z = torch.tensor([[0.5, 0.0, -0.5, 1.0]])
    for tau, gumbel in ((1.0, False), (2.0, False), (0.5, True)):  # tau shapes the surrogate, never the sampling
        r = draws("straight_through", z, tau=tau, gumbel=gumbel)
        p = torch.softmax(z, -1)[0]
        counts = torch.bincount(r.expert_index[:, 0], minlength=4)
        for i in range(4):
            assert binomial_ok(counts[i].item(), N, p[i].item())
    r = draws("straight_through", z, deterministic=True)
    assert torch.all(r.expert_index[:, 0] == 3)


def test_topk_jitter_is_multiplicative_in_band():
    z = torch.tensor([[1.0, 0.99, -3.0]])
    r = draws("topk", z, jitter_eps=0.05)
    # the jittered probabilities: both near-tied experts win sometimes, the far one never
    counts = torch.bincount(r.expert_index[:, 0], minlength=3)
    assert counts[0] > 0 and counts[1] > 0 and counts[2] == 0
    # every jittered logit lies in z * [1 - eps, 1 + eps]: recover from the probs ratio p0/p2 = exp(z0' - z2')
    gap = (r.probs[:, 0] / r.probs[:, 2]).log()
    assert gap.min() >= 1.0 * 0.95 + 3.0 * 0.95 - 1e-4 and gap.max() <= 1.0 * 1.05 + 3.0 * 1.05 + 1e-4
    r0 = estimators.get("topk")(z.repeat(100, 1), k=1, training=True)
    assert torch.all(r0.expert_index == 0)
