"""Criteria `smx_moe_label_smoothed_cross_entropy` (translation) and `smx_moe_cross_entropy` (LM).

Training objective, in fairseq's summed-loss convention (fairseq divides gradients by sample_size):

    loss = task_loss_sum + balance_term + sample_size * B * mean_layers(zloss) + sample_size * sum_layers(penalty)
    balance_term = sample_size * A * mean_layers(balance)     --moe-balance-reduction token_mean (default)
                 = A * sum_layers(balance)                    --moe-balance-reduction batch_sum

with A = --moe-balance-weight, B = --moe-zloss-weight, task_loss_sum the stock criterion's summed (label-smoothed)
cross-entropy and sample_size the stock one (target tokens; sentences with --sentence-avg). Per token (per sentence)
token_mean is exactly task_loss + A * mean(balance) + B * zloss, the Switch paper's formula, whatever the batch
size; batch_sum is the SparseMixer fairseq example's (`loss + balance_loss * alpha` on the summed loss, balance summed
over the layers): per token A * sum(balance) / sample_size, about 10^3 x weaker at ~7k target tokens per batch
(smx.moe.losses.balance_term). With data parallelism each worker's aux term is weighted by its share of sample_size.
penalty is the loss a layer weights itself (ReMoE's lambda * L1 of its gates; 0 for the other estimators), summed over
the layers per token as thu-ml/ReMoE adds each layer's.

Logged (fairseq metrics; every value averaged over the logging interval, weighted by sample_size):
  loss, nll_loss, ppl   the TASK loss only, base 2, exactly as the stock criteria (comparable across estimators)
  moe_objective         the full training objective above per sample_size unit, base 2 (loss + aux / ln 2)
  moe_balance, moe_zloss, moe_dropped, moe_entropy, moe_unused   means over the MoE layers
  moe_imbalance, moe_nograd, moe_logit_rms   means over the MoE layers of max/mean expert load, the fraction of
                        tokens whose router gets no task gradient (SparseMixer's masked singletons, ReMoE's zero-gate
                        tokens), and sqrt(mean z^2)
  moe_active, moe_sparsity   means over the MoE layers of the experts per token and 1 - active / E (ReMoE's vary)
  moe_penalty, moe_l1_coeff  ReMoE: sum over the layers of lambda * L1, and lambda
  moe_load_{enc|dec}{L}_e{i}   fraction of layer L's routed assignments sent to expert i
  moe_imbalance_{enc|dec}{L}   layer L's max/mean expert load

A NaN or infinite loss (training or validation) stops the engine with one `SMX_NONFINITE` log line naming the update
(smx.fairseq_plugin.guards.checked_loss), before the update is applied.
"""

import math
from dataclasses import dataclass, field

import torch
from fairseq.criterions import register_criterion
from fairseq.criterions.cross_entropy import CrossEntropyCriterion, CrossEntropyCriterionConfig
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics
from fairseq.utils import item

from smx.engine.contract import LM_CRITERION, TRANSLATION_CRITERION
from smx.fairseq_plugin.guards import checked_loss
from smx.moe.losses import BALANCE_REDUCTIONS, balance_term

PREFIX = "moe_"
BalanceReduction = ChoiceEnum(list(BALANCE_REDUCTIONS))


@dataclass
class MoECriterionArgs(FairseqDataclass):
    moe_balance_weight: float = field(default=0.01, metadata={"help": "weight A of the load-balance loss"})
    moe_zloss_weight: float = field(default=0.0, metadata={"help": "weight B of the router z-loss"})
    moe_balance_reduction: BalanceReduction = field(
        default="token_mean", metadata={"help": "token_mean: A x mean over layers per token (Switch); batch_sum: A x "
                                                "sum over layers on the summed loss (SparseMixer example)"}
    )


def _check_weights(balance_weight: float, zloss_weight: float) -> tuple[float, float]:
    for flag, value in (("--moe-balance-weight", balance_weight), ("--moe-zloss-weight", zloss_weight)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{flag} must be a number >= 0; got {value!r}")
    return float(balance_weight), float(zloss_weight)


def moe_aux_terms(aux: list) -> dict[str, torch.Tensor]:
    """Means over the MoE layers' LayerAux of one forward: balance and zloss (differentiable), stats (detached),
    the layers' penalties summed (differentiable)."""
    out = {
        "balance": torch.stack([a.balance_loss for a in aux]).mean(),
        "zloss": torch.stack([a.z_loss for a in aux]).mean(),
        "dropped": torch.stack([a.stats.dropped.float() for a in aux]).mean(),
        "entropy": torch.stack([a.stats.entropy.float() for a in aux]).mean(),
        "unused": torch.stack([a.stats.unused.float() for a in aux]).mean(),
        "imbalance": torch.stack([a.stats.imbalance.float() for a in aux]).mean(),
        "nograd": torch.stack([a.stats.no_gradient.float() for a in aux]).mean(),
        "logit_rms": torch.stack([a.stats.logit_rms.float() for a in aux]).mean(),
        "active": torch.stack([a.stats.active.float() for a in aux]).mean(),
        "sparsity": torch.stack([a.stats.sparsity.float() for a in aux]).mean(),
        "penalty": torch.stack([a.penalty for a in aux]).sum(),
    }
    coefficients = [a.l1_coeff for a in aux if a.l1_coeff is not None]
    if coefficients:
        out["l1_coeff"] = coefficients[0].float()  # one lambda shared by every layer
    return out


def moe_logging(aux: list, terms: dict[str, torch.Tensor], sample_size) -> dict[str, torch.Tensor]:
    """Summable logging entries: each value times sample_size (reduce_moe_metrics divides by the summed size)."""
    out = {PREFIX + key: value.detach() * sample_size for key, value in terms.items()}
    for a in aux:
        for i, load in enumerate((a.stats.load.float() * sample_size).unbind(0)):
            out[f"{PREFIX}load_{a.name}_e{i}"] = load
        out[f"{PREFIX}imbalance_{a.name}"] = a.stats.imbalance.float() * sample_size
    return out


def reduce_moe_metrics(logging_outputs) -> None:
    """Log every moe_* entry as its sample_size-weighted mean; moe_objective in base 2 like loss."""
    sample_size = item(sum(log.get("sample_size", 0) for log in logging_outputs))
    if sample_size <= 0:
        return
    keys = sorted({k for log in logging_outputs for k in log if k.startswith(PREFIX)})
    for key in keys:
        value = item(sum(log.get(key, 0) for log in logging_outputs)) / sample_size
        if key == PREFIX + "objective":
            metrics.log_scalar(key, value / math.log(2), sample_size, round=3)
        elif key == PREFIX + "l1_coeff":  # ReMoE's lambda spans 1e-8 .. 1: significant digits, not decimals
            metrics.log_scalar(key, float(f"{value:.4g}"), sample_size)
        else:
            metrics.log_scalar(key, value, sample_size, round=4)


class MoECriterionMixin:
    """The stock forward plus the MoE aux terms; subclasses combine it with a stock fairseq criterion."""

    def _init_moe(self, moe_balance_weight: float, moe_zloss_weight: float, moe_balance_reduction: str) -> None:
        self.moe_balance_weight, self.moe_zloss_weight = _check_weights(moe_balance_weight, moe_zloss_weight)
        if str(moe_balance_reduction) not in BALANCE_REDUCTIONS:
            raise ValueError(f"--moe-balance-reduction must be one of {', '.join(BALANCE_REDUCTIONS)}; "
                             f"got {moe_balance_reduction!r}")
        self.moe_balance_reduction = str(moe_balance_reduction)

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        loss, nll_loss = self.compute_loss(model, net_output, sample, reduce=reduce)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logging_output = {
            "loss": loss.data,
            "ntokens": sample["ntokens"],
            "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        if nll_loss is not loss:
            logging_output["nll_loss"] = nll_loss.data
        if getattr(self, "report_accuracy", False):
            n_correct, total = self.compute_accuracy(model, net_output, sample)
            logging_output["n_correct"], logging_output["total"] = item(n_correct.data), item(total.data)
        extra = net_output[1] if isinstance(net_output, (tuple, list)) and len(net_output) > 1 else None
        aux = extra.get("moe", []) if isinstance(extra, dict) else []
        if aux and reduce:
            terms = moe_aux_terms(aux)
            balances = torch.stack([a.balance_loss for a in aux])  # (layers,)
            loss = loss + balance_term(balances, self.moe_balance_weight, self.moe_balance_reduction, sample_size)
            loss = loss + sample_size * self.moe_zloss_weight * terms["zloss"]
            loss = loss + sample_size * terms["penalty"]
            logging_output.update(moe_logging(aux, terms, sample_size))
            logging_output[PREFIX + "objective"] = loss.data
        loss = checked_loss(self, loss)  # NaN/inf: report + NonFiniteLoss before any backward (guards.py)
        return loss, sample_size, logging_output

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        reduce_moe_metrics(logging_outputs)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


@dataclass
class SmxMoELabelSmoothedCrossEntropyConfig(LabelSmoothedCrossEntropyCriterionConfig, MoECriterionArgs):
    pass


@register_criterion(TRANSLATION_CRITERION, dataclass=SmxMoELabelSmoothedCrossEntropyConfig)
class SmxMoELabelSmoothedCrossEntropy(MoECriterionMixin, LabelSmoothedCrossEntropyCriterion):
    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0, report_accuracy=False,
                 moe_balance_weight=0.01, moe_zloss_weight=0.0, moe_balance_reduction="token_mean"):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size, report_accuracy)
        self._init_moe(moe_balance_weight, moe_zloss_weight, moe_balance_reduction)


@dataclass
class SmxMoECrossEntropyConfig(CrossEntropyCriterionConfig, MoECriterionArgs):
    pass


@register_criterion(LM_CRITERION, dataclass=SmxMoECrossEntropyConfig)
class SmxMoECrossEntropy(MoECriterionMixin, CrossEntropyCriterion):
    def __init__(self, task, sentence_avg, moe_balance_weight=0.01, moe_zloss_weight=0.0,
                 moe_balance_reduction="token_mean"):
        super().__init__(task, sentence_avg)
        self._init_moe(moe_balance_weight, moe_zloss_weight, moe_balance_reduction)
