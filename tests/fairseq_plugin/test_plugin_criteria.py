"""The criteria: loss = task loss + A * mean balance + B * mean z-loss (summed convention), and their logging."""

from __future__ import annotations

import math

import pytest
import torch
from fairseq.logging import metrics

import plugin_helpers as h
from smx.fairseq_plugin.criteria import SmxMoECrossEntropy, SmxMoELabelSmoothedCrossEntropy

PAIRS = [("s1 s2 s3 s4 s5", "t8 t13 t2"), ("s6 s7", "t1 t6 t11 t0 t5 t10"), ("s3 s3 s9", "t2")]
ALPHA, BETA, EPS = 0.3, 0.02, 0.1


def _hand_label_smoothed(logits: torch.Tensor, target: torch.Tensor, pad: int, eps: float):
    """Label-smoothed CE summed over non-pad targets, written out: (1 - eps - e) nll + e * sum_v -log p_v."""
    lprobs = torch.log_softmax(logits.double(), dim=-1)  # (B, T, V)
    keep = target.ne(pad)
    nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)[keep].sum()
    smooth = -lprobs.sum(-1)[keep].sum()
    e = eps / (logits.shape[-1] - 1)
    return (1 - eps - e) * nll + e * smooth, nll


def _run_twice(model, criterion, sample, seed: int):
    """The criterion's output and an independent forward with the same routing randomness."""
    torch.manual_seed(seed)
    loss, sample_size, log = criterion(model, sample)
    torch.manual_seed(seed)
    logits, extra = model(**sample["net_input"])
    return loss, sample_size, log, logits, extra


@pytest.mark.parametrize("estimator", ["sparsemixer", "topk"])
def test_translation_loss_by_hand(dict_dir, estimator):
    task, model, criterion = h.build(h.mt_argv(
        dict_dir, "--moe-num-experts", "4", "--moe-estimator", estimator, "--moe-decoder-layers", "0,1",
        "--dropout", "0", "--label-smoothing", str(EPS), "--moe-balance-weight", str(ALPHA),
        "--moe-zloss-weight", str(BETA)))
    assert isinstance(criterion, SmxMoELabelSmoothedCrossEntropy)
    model.train()
    sample = h.mt_sample(task, PAIRS)
    loss, sample_size, log, logits, extra = _run_twice(model, criterion, sample, seed=3)
    pad = task.target_dictionary.pad()
    task_loss, nll = _hand_label_smoothed(logits, sample["target"], pad, EPS)
    aux = extra["moe"]
    assert len(aux) == 3  # enc0, dec0, dec1
    balance = sum(a.balance_loss for a in aux) / 3
    zloss = sum(a.z_loss for a in aux) / 3
    ntokens = int(sample["target"].ne(pad).sum())
    assert sample_size == ntokens == sample["ntokens"]
    expected = task_loss + ntokens * (ALPHA * balance + BETA * zloss)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert (ALPHA * balance + BETA * zloss).item() > 1e-3  # the aux term is really in there
    # logged: the task loss only; the aux terms as sample_size-weighted sums
    assert log["loss"].item() == pytest.approx(task_loss.item(), rel=1e-5)
    assert log["nll_loss"].item() == pytest.approx(nll.item(), rel=1e-5)
    assert log["moe_balance"].item() == pytest.approx(balance.item() * ntokens, rel=1e-5)
    assert log["moe_zloss"].item() == pytest.approx(zloss.item() * ntokens, rel=1e-5)
    assert log["moe_objective"].item() == pytest.approx(expected.item(), rel=1e-5)
    for a in aux:
        for i in range(4):
            assert log[f"moe_load_{a.name}_e{i}"].item() == pytest.approx(a.stats.load[i].item() * ntokens, abs=1e-5)
        assert log[f"moe_imbalance_{a.name}"].item() == pytest.approx(4 * a.stats.load.max().item() * ntokens, rel=1e-5)
    for key, field in (("moe_imbalance", "imbalance"), ("moe_nograd", "no_gradient"), ("moe_logit_rms", "logit_rms")):
        mean = sum(getattr(a.stats, field) for a in aux) / 3
        assert log[key].item() == pytest.approx(mean.item() * ntokens, rel=1e-5, abs=1e-6), key
    # gradients flow into the routers from the aux terms
    loss.backward()
    assert model.encoder.layers[0].fc1.moe.router.proj.weight.grad.abs().sum() > 0


def test_lm_loss_by_hand(dict_dir):
    task, model, criterion = h.build(h.lm_argv(
        dict_dir, "--moe-num-experts", "4", "--moe-k", "2", "--moe-estimator", "sparsemixer_v2", "--dropout", "0",
        "--moe-decoder-layers", "0,1", "--moe-balance-weight", str(ALPHA), "--moe-zloss-weight", str(BETA)))
    assert isinstance(criterion, SmxMoECrossEntropy)
    model.train()
    sample = h.lm_sample(task, ["w1 w2 w3 w4 w5 w6", "w3 w4", "w9 w10 w11"])
    loss, sample_size, log, logits, extra = _run_twice(model, criterion, sample, seed=5)
    pad = task.source_dictionary.pad()
    task_loss, _ = _hand_label_smoothed(logits, sample["target"], pad, 0.0)
    balance = (extra["moe"][0].balance_loss + extra["moe"][1].balance_loss) / 2
    zloss = (extra["moe"][0].z_loss + extra["moe"][1].z_loss) / 2
    expected = task_loss + sample_size * (ALPHA * balance + BETA * zloss)
    assert sample_size == sample["ntokens"]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert log["loss"].item() == pytest.approx(task_loss.item(), rel=1e-5)
    assert "nll_loss" not in log  # as stock cross_entropy


def test_zero_weights_give_the_task_loss(dict_dir):
    task, model, criterion = h.build(h.mt_argv(dict_dir, "--moe-balance-weight", "0", "--moe-zloss-weight", "0",
                                               "--label-smoothing", "0.1"))
    sample = h.mt_sample(task, PAIRS)
    model.eval()
    loss, _, log = criterion(model, sample)
    assert loss.item() == pytest.approx(log["loss"].item(), rel=1e-6)


def test_negative_weight_is_refused(dict_dir):
    with pytest.raises(ValueError, match="--moe-balance-weight"):
        h.build(h.mt_argv(dict_dir, "--moe-balance-weight", "-1"))


def test_reduce_metrics_weights_by_sample_size():
    """Two logging outputs (e.g. two GPUs or accumulation steps): means weighted by sample_size, loss in base 2."""
    logs = [
        {"loss": torch.tensor(20.0), "nll_loss": torch.tensor(18.0), "ntokens": 10, "nsentences": 2,
         "sample_size": 10, "moe_balance": torch.tensor(1.0 * 10), "moe_load_enc0_e0": torch.tensor(0.25 * 10),
         "moe_objective": torch.tensor(21.0)},
        {"loss": torch.tensor(90.0), "nll_loss": torch.tensor(80.0), "ntokens": 30, "nsentences": 5,
         "sample_size": 30, "moe_balance": torch.tensor(2.0 * 30), "moe_load_enc0_e0": torch.tensor(0.75 * 30),
         "moe_objective": torch.tensor(93.0)},
    ]
    with metrics.aggregate(new_root=True) as agg:
        SmxMoELabelSmoothedCrossEntropy.reduce_metrics(logs)
    values = agg.get_smoothed_values()
    assert values["loss"] == pytest.approx(110 / 40 / math.log(2), abs=1e-3)
    assert values["nll_loss"] == pytest.approx(98 / 40 / math.log(2), abs=1e-3)
    assert values["moe_balance"] == pytest.approx((10 + 60) / 40, abs=1e-4)
    assert values["moe_load_enc0_e0"] == pytest.approx((2.5 + 22.5) / 40, abs=1e-4)
    assert values["moe_objective"] == pytest.approx(114 / 40 / math.log(2), abs=1e-3)
    assert SmxMoELabelSmoothedCrossEntropy.logging_outputs_can_be_summed()


@pytest.mark.parametrize("reduction", ["token_mean", "batch_sum"])
def test_balance_reduction_gradient(dict_dir, reduction):
    """The balance term's gradient per target token (fairseq divides the summed loss by sample_size):
    token_mean = A * mean over layers of dB/dtheta, batch_sum = A * sum over layers of dB/dtheta / target tokens."""
    task, model, criterion = h.build(h.mt_argv(
        dict_dir, "--moe-num-experts", "4", "--moe-estimator", "topk", "--moe-decoder-layers", "0,1",
        "--dropout", "0", "--label-smoothing", str(EPS), "--moe-balance-weight", str(ALPHA),
        "--moe-zloss-weight", "0", "--moe-balance-reduction", reduction))
    model.train()
    sample = h.mt_sample(task, PAIRS)
    router = model.encoder.layers[0].fc1.moe.router.proj.weight
    torch.manual_seed(7)
    loss, sample_size, log = criterion(model, sample)
    (full,) = torch.autograd.grad(loss / sample_size, router)  # what the optimizer sees per target token
    torch.manual_seed(7)
    logits, extra = model(**sample["net_input"])
    task_loss, _ = _hand_label_smoothed(logits, sample["target"], task.target_dictionary.pad(), EPS)
    balances = [a.balance_loss for a in extra["moe"]]  # enc0, dec0, dec1
    (task_grad,) = torch.autograd.grad(task_loss / sample_size, router, retain_graph=True)
    layer_grads = [torch.autograd.grad(b, router, retain_graph=True, allow_unused=True)[0] for b in balances]
    layer_grads = [torch.zeros_like(router) if g is None else g for g in layer_grads]
    if reduction == "token_mean":
        expected = ALPHA * sum(layer_grads) / len(layer_grads)
    else:
        expected = ALPHA * sum(layer_grads) / sample_size
    assert sample_size == int(sample["target"].ne(task.target_dictionary.pad()).sum()) > 1
    torch.testing.assert_close(full - task_grad.float(), expected, rtol=1e-4, atol=1e-7)
    assert expected.abs().sum() > 0  # the encoder router really gets a balance gradient


def test_unknown_balance_reduction_is_refused(dict_dir):
    with pytest.raises(SystemExit):  # argparse choice error, before any model is built
        h.build(h.mt_argv(dict_dir, "--moe-balance-reduction", "mean"))


def test_remoe_penalty_is_added_per_token_summed_over_layers_and_lambda_is_one_per_model(dict_dir):
    task, model, criterion = h.build(h.mt_argv(
        dict_dir, "--moe-num-experts", "4", "--moe-estimator", "remoe", "--moe-decoder-layers", "0,1",
        "--moe-estimator-options", '{"l1_coeff": 0.5}', "--dropout", "0", "--label-smoothing", str(EPS),
        "--moe-balance-weight", str(ALPHA), "--moe-zloss-weight", "0"))
    blocks = [layer.fc1 for layer in (*model.encoder.layers, *model.decoder.layers) if hasattr(layer.fc1, "moe")]
    assert len(blocks) == 3 and len({id(b.moe.relu_control) for b in blocks}) == 1  # one lambda for the model
    model.train()
    sample = h.mt_sample(task, PAIRS)
    loss, sample_size, log, logits, extra = _run_twice(model, criterion, sample, seed=3)
    task_loss, _ = _hand_label_smoothed(logits, sample["target"], task.target_dictionary.pad(), EPS)
    aux = extra["moe"]
    penalty = sum(a.penalty for a in aux)  # lambda * L1 of each layer, summed over the layers
    assert all(float(a.balance_loss) == 0 for a in aux)  # no balance loss: moe.balance_weight does not act
    assert penalty.item() > 1e-3
    assert loss.item() == pytest.approx((task_loss + sample_size * penalty).item(), rel=1e-5)
    assert log["moe_penalty"].item() == pytest.approx(penalty.item() * sample_size, rel=1e-5)
    assert log["moe_l1_coeff"].item() == pytest.approx(0.5 * sample_size)
    active = sum(a.stats.active for a in aux) / 3
    assert log["moe_active"].item() == pytest.approx(active.item() * sample_size, rel=1e-5)
    control = blocks[0].moe.relu_control
    model.set_num_updates(0)  # fairseq's call reaches the shared control once (and each layer's call is idempotent)
    model.set_num_updates(1)
    assert abs(int(control.exponent)) <= 1 and int(control.counted_update) == 1
    state = model.state_dict()  # a checkpoint names the shared control under each layer; loading fills one tensor
    keys = [n for n in state if n.endswith("relu_control.exponent")]
    assert len(keys) == 3 and {int(state[n]) for n in keys} == {int(control.exponent)}
    model.load_state_dict(state)
    assert all(b.moe.relu_control is control for b in blocks)


def test_global_loss_flag_reaches_the_layer_and_equals_the_local_loss_in_one_micro_batch(dict_dir):
    losses = []
    for balance in ("loss", "global_loss"):
        torch.manual_seed(0)  # the same initialization for both
        task, model, criterion = h.build(h.mt_argv(
            dict_dir, "--moe-num-experts", "4", "--moe-estimator", "topk", "--moe-balance", balance, "--dropout", "0",
            "--moe-balance-weight", str(ALPHA)))
        assert model.encoder.layers[0].fc1.moe.config.balance == balance
        model.train()
        model.set_num_updates(0)
        losses.append(criterion(model, h.mt_sample(task, PAIRS))[0].item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
