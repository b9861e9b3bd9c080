"""Training protocols (DESIGN.md section 4b): how an arm's settings beyond the estimator are chosen.

    controlled  every setting but the estimator comes from the recipe and is identical across arms; an arm's own
                options are router.options plus router.per_estimator[<estimator>] (so v2 can get jitter_eps 0.01
                without the others getting it)
    reference   each arm trained as its reference code trains it: the ARM_KEYS below come from REFERENCES (router
                bias, output scale omega, estimator options, balance-loss inputs and reduction, router-input
                jitter); model size, data, optimizer, schedule, batch, k, updates and the balance weight still come
                from the recipe

Pure data and pure functions on the section dataclasses; smx.recipe.recipes applies `resolve` while building a Recipe, so
a run's recipe.yaml holds the resolved arm (and resolving it again changes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

PROTOCOLS = ("controlled", "reference")
# The settings a protocol decides per arm, as (section, key); the estimator itself is router.estimator.
ARM_KEYS = (("router", "options"), ("moe", "router_bias"), ("moe", "output_scale"), ("moe", "balance_source"),
            ("moe", "balance_reduction"), ("moe", "input_jitter"))


@dataclass(frozen=True)
class Reference:
    """One arm as its reference code trains it."""

    source: str  # repository and file(s) the settings were read from
    options: dict = field(default_factory=dict)  # the estimator's options
    router_bias: bool = False
    output_scale: bool = False  # omega
    balance_source: str = "routed"  # smx.moe.config.BALANCE_SOURCES
    balance_reduction: str = "token_mean"  # smx.moe.losses.BALANCE_REDUCTIONS
    input_jitter: float = 0.0
    differences: tuple[str, ...] = ()  # what smx still does differently from that code, and why


_SPARSEMIXER_EXAMPLE = "microsoft/SparseMixer example/moe/{translation_switch,transformer_switch_layer}.py"
_FAIRSEQ_DIFFS = (
    "padding tokens are not routed (the reference routes them and counts them in the balance loss)",
)
_V1 = Reference(
    source="microsoft/SparseMixer sparsemixer/sparsemixer.py + " + _SPARSEMIXER_EXAMPLE,
    options={"jitter_eps": 0.1}, router_bias=True, output_scale=True, balance_source="reference",
    balance_reduction="batch_sum", differences=_FAIRSEQ_DIFFS,
)
_SWITCH_K1 = Reference(
    source="microsoft/SparseMixer sparsemixer/switchgate.py + " + _SPARSEMIXER_EXAMPLE,
    options={"jitter_eps": 0.1, "normalize": False}, router_bias=True, balance_reduction="batch_sum",
    differences=_FAIRSEQ_DIFFS,
)
_HF_BALANCE = ("the balance loss is the per-layer Switch loss averaged over layers; transformers' "
               "load_balancing_loss_func pools every layer's tokens into one loss and counts f per top-k slot "
               "(k x smx's value at k >= 2)")
_GSHARD_TOPK = Reference(
    source="transformers models/mixtral/modeling_mixtral.py (softmax, top-k, renormalized; no router bias)",
    options={"jitter_eps": 0.0, "normalize": True}, differences=(_HF_BALANCE,),
)
REFERENCES: dict[str, Reference] = {
    "sparsemixer": _V1,
    # The first-order and integral variants share v1's training code; only the forward scale rule differs.
    "sparsemixer_1st": replace(_V1, source="SparseMixer v1 variant (Euler rule), v1's training: " + _SPARSEMIXER_EXAMPLE),
    "sparsemixer_inf": replace(_V1, source="SparseMixer v1 variant (U(0,1) scale), v1's training: "
                                           + _SPARSEMIXER_EXAMPLE),
    "sparsemixer_v2": Reference(
        source="transformers models/phimoe/modeling_phimoe.py sparsemixer() + PhimoeMultiplier (GRIN)",
        options={"jitter_eps": 0.01}, balance_source="reference",
        differences=("the forward scale 1/3 is exact; the reference writes it as 0.3333 (3e-5 apart)", _HF_BALANCE),
    ),
    "straight_through": Reference(
        source="ReinMax repository (straight-through: softmax(z / tau) surrogate, D ~ softmax(z)) in the "
               "SparseMixer fairseq example's training setup (its ST baselines)",
        options={"tau": 1.0, "gumbel": False, "deterministic": False}, router_bias=True,
        balance_reduction="batch_sum", differences=_FAIRSEQ_DIFFS,
    ),
    "default_moe": Reference(
        source="Panda et al. 2025 (Default MoE), eq. 11: top-k plus EMA default vectors, beta 0.9; no logit jitter",
        options={"beta": 0.9, "jitter_eps": 0.0, "normalize": False},
        differences=("the authors' code was not available to this project: settings from the paper",),
    ),
    "remoe": Reference(
        source="thu-ml/ReMoE's Megatron router (ReLU routing, l1_reg_load_balancing: read in a Megatron fork that "
               "carries it) and its scripts (--disable-bias-linear, l1 coeff init 1e-8, multiplier 1.2); the "
               "coefficient update from the paper (lambda *= alpha^sign(target - S))",
        options={"l1_coeff": 1e-8, "l1_multiplier": 1.2},
        differences=("the sparsity steering lambda pools the zero-gate counts of every layer and micro-batch (the "
                     "reference averages the per-layer, per-micro-batch fractions: equal when all route as many "
                     "tokens)", "the router is initialized like nn.Linear (the reference: normal, init_method_std)",
                     _FAIRSEQ_DIFFS[0]),
    ),
    "densemixer": Reference(
        source="yaof20/DenseMixer densemixer/models/olmoe_custom.py (OLMoE: no router bias, norm_topk_prob false)",
        options={"normalize": False}, differences=(_HF_BALANCE,),
    ),
}


def reference_for(estimator: str, k: int) -> Reference:
    """The reference arm of `estimator` at top-k (topk: Switch for k = 1, Mixtral-style for k >= 2)."""
    if estimator == "topk":
        return _SWITCH_K1 if k == 1 else _GSHARD_TOPK
    if estimator not in REFERENCES:
        raise ValueError(f"router.protocol=reference: no reference recorded for estimator {estimator!r} "
                         f"(known: topk, {', '.join(REFERENCES)})")
    return REFERENCES[estimator]


def resolve(router: Any, moe: Any) -> tuple[Any, Any, list[str]]:
    """(router, moe, notes): the RouterConfig and MoESection sections with the protocol applied.

    Raises ValueError (one `key: message` per line, keys relative to the recipe) for a bad per_estimator map.
    Notes name every recipe value the reference protocol replaced.
    """
    if router.protocol == "controlled":
        own = router.per_estimator.get(router.estimator, {})
        return replace(router, options={**router.options, **own}), moe, []
    ref = reference_for(router.estimator, moe.k)
    notes = []
    if router.options != ref.options:
        notes.append(f"router.protocol=reference: router.options={ref.options} ({ref.source}; recipe: "
                     f"{router.options})")
    changes = {}
    for _, key in ARM_KEYS[1:]:
        value = getattr(ref, key)
        if getattr(moe, key) != value:
            notes.append(f"router.protocol=reference: moe.{key}={value!r} (recipe: {getattr(moe, key)!r})")
        changes[key] = value
    return replace(router, options=dict(ref.options)), replace(moe, **changes), notes


# The frameworks differ (torchtitan mean-centres the update, KempnerForge adds b inside the sigmoid): smx implements
# the paper's rule, and says so in meta.json.
LOSS_FREE_VARIANT = ("Wang et al. 2024 (arXiv 2408.15664) Algorithm 1: experts = top-k of s + b, gates from s, "
                     "b_i += u * sign(mean(c) - c_i) after each update, c the expert counts of all its micro-batches "
                     "and ranks; b not centred, no gradient through b")


GLOBAL_LOSS_VARIANT = ("Qiu et al. 2025 (arXiv 2501.11873) global-batch balance: E * sum_i f_i P_i with f_i from the "
                       "counts of the update's micro-batches so far, all-reduced over the data-parallel ranks (one "
                       "all-reduce of E + 1 numbers per layer and micro-batch, as Megatron-core's global_aux_loss); "
                       "P_i local")
REMOE_RULE = ("Wang et al. 2025 (ICLR, thu-ml/ReMoE): g = ReLU(z); penalty lambda * E * sum_e mean_t(g_te) n_e / (T k) "
              "per layer, summed over layers; lambda *= l1_multiplier^sign((1 - k/E) - S) after each update, S the "
              "zero-gate fraction of all layers, micro-batches and ranks; no balance loss (moe.balance_weight unused)")


def arm_settings(recipe: Any) -> dict:
    """The resolved settings that make one arm (meta.json "arm"): protocol, estimator and every ARM_KEYS value."""
    out: dict[str, Any] = {"protocol": recipe.router.protocol, "estimator": recipe.router.estimator}
    for sec, key in ARM_KEYS:
        value = getattr(getattr(recipe, sec), key)
        out[f"{sec}.{key}"] = dict(value) if isinstance(value, dict) else value
    out["moe.balance_weight"] = recipe.moe.balance_weight
    m = recipe.moe
    if (m.score, m.balance, m.shared_experts, m.expert_ffn_dim) != ("softmax", "loss", 0, None):
        out.update({"moe.score": m.score, "moe.balance": m.balance, "moe.shared_experts": m.shared_experts,
                    "moe.expert_ffn_dim": m.expert_ffn_dim})
    if m.balance == "loss_free":
        out["moe.bias_update_rate"] = m.bias_update_rate
        out["loss_free_variant"] = LOSS_FREE_VARIANT
    if m.balance == "global_loss":
        out["global_loss_variant"] = GLOBAL_LOSS_VARIANT
    if recipe.router.estimator == "remoe":
        out["remoe_rule"] = REMOE_RULE
    if recipe.router.protocol == "reference":
        ref = reference_for(recipe.router.estimator, recipe.moe.k)
        out["reference"] = ref.source
        out["differences"] = list(ref.differences)
    return out


def effective_balance_weight(weight: float, reduction: str, moe_layers: int, tokens_per_batch: float) -> float:
    """Per-token weight on EACH layer's balance loss: weight / layers (token_mean) or weight / tokens (batch_sum)."""
    if reduction == "token_mean":
        return weight / max(moe_layers, 1)
    return weight / tokens_per_batch
