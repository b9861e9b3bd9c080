"""The estimator interface (DESIGN.md section 3) and the pure math the estimators share.

An estimator maps router logits to a Routing. Those whose selection is a top-k of the scores (`top_k_selection`)
also take a selection bias (loss-free balancing: experts chosen by top-k of s + b, gates from s), and those listing
"sigmoid" in `scores` take sigmoid scores (DeepSeek-V3: s = sigmoid(z), gates renormalized over the k when k > 1);
ReMoE (`variable_k`) routes each token to a variable number of experts (Routing.active). Its router gradient reaches
the logits through ordinary autograd on the tensors it returns: `gate` (multiplies the chosen experts' outputs), and
for the estimators that need them `dense_weight` (multiplies every expert's output; forward value 0) or
`default_weight` (multiplies per-expert default vectors kept by the layer).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from torch import Tensor


@dataclass(frozen=True)
class Routing:
    expert_index: Tensor  # (tokens, k) int64
    gate: Tensor  # (tokens, k) float32; multiplies the expert OUTPUT; carries the estimator's router gradient
    probs: Tensor  # (tokens, n_experts) float32 softmax(logits): balance loss and statistics
    # Dense estimators only: (tokens, n_experts), forward value exactly 0; the layer adds
    # sum_i dense_weight_i * E_i(x) over EVERY expert, which carries the router gradient J^T [<g, E_i(x)>]_i.
    dense_weight: Tensor | None = None
    # Default MoE only, in training: (tokens, n_experts), p_i on unselected experts and 0 on selected ones; the layer
    # adds sum_i default_weight_i * default_vector_i.
    default_weight: Tensor | None = None
    # Variable-count estimators only (ReMoE): (tokens, k) bool, True on the assignments that exist (a nonzero gate);
    # the others are computed by no expert and enter no count. None: every assignment exists.
    active: Tensor | None = None


@dataclass(frozen=True)
class Estimator:
    """Base class: subclasses are frozen dataclasses whose fields are the estimator's options."""

    name: ClassVar[str] = ""
    dense: ClassVar[bool] = False  # True: the layer must compute every expert's output (Routing.dense_weight)
    uses_default_vectors: ClassVar[bool] = False  # True: the layer keeps EMA default vectors (Routing.default_weight)
    max_k: ClassVar[int | None] = None  # None: any k up to the number of experts
    masked_sampling: ClassVar[bool] = False  # True: the SparseMixer family (jitter_eps is the mask's band)
    scores: ClassVar[tuple[str, ...]] = ("softmax",)  # SCORES it is defined on (moe.score)
    top_k_selection: ClassVar[bool] = False  # True: experts = top-k of the scores (+ a loss-free selection bias)
    variable_k: ClassVar[bool] = False  # True: a variable number of experts per token (Routing.active)
    balance_loss: ClassVar[bool] = True  # False: no balance loss (ReMoE: its L1 penalty); moe.balance_weight unused

    def validate(self, k: int, num_experts: int, score: str = "softmax", balance: str = "loss") -> None:
        """Raise ValueError when this estimator cannot route with top-k over num_experts experts, with `score`
        (softmax | sigmoid) and `balance` (loss | loss_free | global_loss)."""
        if score not in self.scores:
            raise ValueError(f"moe.score={score}: estimator {self.name!r} is defined on the softmax over the experts "
                             "(its gradient rule and its gates are); use moe.score=softmax")
        if balance == "loss_free" and not self.top_k_selection:
            raise ValueError(f"moe.balance=loss_free biases a top-k selection, but estimator {self.name!r} does not "
                             "choose its experts by a top-k of the scores")
        if not 1 <= k <= num_experts:
            raise ValueError(f"moe.k={k} must be between 1 and moe.num_experts={num_experts}")
        if self.max_k is not None and k > self.max_k:
            raise ValueError(f"estimator {self.name!r} routes top-{self.max_k} only; got moe.k={k}")
        if self.masked_sampling and getattr(self, "jitter_eps", None) == 0:
            raise ValueError(
                f"estimator {self.name!r} with jitter_eps=0 keeps only the argmax in its mask, so every gate is "
                "constant 1 and the router would get no task gradient; use jitter_eps > 0 (reference 0.1, GRIN 0.01)"
            )

    def balance_inputs(self, logits: Tensor, routing: Routing, k: int) -> tuple[Tensor, Tensor]:
        """(probs (tokens, E), expert_index (tokens, k)) that this estimator's REFERENCE code feeds its balance loss.

        Default: the router softmax and the routed experts (Switch). Estimators whose reference differs override it;
        the layer uses it only with moe balance_source "reference" (protocol reference).
        """
        return routing.probs, routing.expert_index

    def no_gradient_tokens(self, logits: Tensor, routing: Routing, k: int) -> Tensor | None:
        """(tokens,) bool: the tokens whose router gets no task gradient in training (telemetry); None: none.

        The SparseMixer family: the tokens whose first mask keeps one expert only (its gate is then the constant 1);
        every other estimator here gives each routed token a router gradient.
        """
        if self.masked_sampling:
            return keep_mask(logits, float(getattr(self, "jitter_eps"))).sum(dim=-1) == 1
        return None

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def options(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __call__(self, logits: Tensor, k: int, training: bool, generator: torch.Generator | None = None, *,
                 score: str = "softmax", bias: Tensor | None = None) -> Routing:
        """score / bias: only for the estimators that take them (validate() refuses the others)."""
        raise NotImplementedError


def check_eps(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and value >= 0):
        raise ValueError(f"jitter_eps must be a number >= 0 for estimator {name!r}; got {value!r}")


# ---------------------------------------------------------------- pure functions shared by the estimators


def keep_mask(logits: Tensor, eps: float, excluded: Tensor | None = None) -> Tensor:
    """SparseMixer's sparsity mask: expert i stays iff (z* - z_i) / max(|z_i|, z*) <= 2 eps.

    z* is the maximum over the experts not yet `excluded` (a (tokens, E) bool mask of already chosen experts, GRIN's
    later stages); excluded experts never stay. Returns a (tokens, E) bool tensor, True = kept. As in the reference,
    a 0/0 ratio (z_i = z* = 0) keeps the expert.
    """
    z = logits.detach()
    if excluded is not None:
        z = z.masked_fill(excluded, float("-inf"))
    z_max = z.max(dim=-1, keepdim=True).values  # (tokens, 1)
    factor = logits.detach().abs().clamp(min=z_max)  # (tokens, E) max(|z_i|, z*)
    drop = ((z_max - logits.detach()) / factor) > (2 * eps)
    if excluded is not None:
        drop = drop | excluded
    return ~drop


def masked_softmax(logits: Tensor, keep: Tensor) -> Tensor:
    """softmax over the kept experts only; masked experts get probability exactly 0. (tokens, E)."""
    return torch.softmax(logits.masked_fill(~keep, float("-inf")), dim=-1)


def gumbel(shape: torch.Size, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard Gumbel noise -log(Exp(1)), drawn from `generator` when given."""
    e = torch.empty(shape, dtype=like.dtype, device=like.device).exponential_(generator=generator)
    return -e.log()


def uniform(shape: torch.Size, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """float32 U(0, 1) noise drawn from `generator` when given."""
    return torch.rand(shape, device=device, generator=generator)


def sample_masked(logits: Tensor, keep: Tensor, generator: torch.Generator | None) -> Tensor:
    """Gumbel-max sample of one expert per token from softmax over the kept experts. (tokens, 1) int64."""
    noisy = logits.detach().masked_fill(~keep, float("-inf")) + gumbel(logits.shape, logits, generator)
    return noisy.argmax(dim=-1, keepdim=True)


def scores_of(z: Tensor, score: str) -> tuple[Tensor, Tensor]:
    """(s, probs): s = softmax(z) or sigmoid(z), the gating scores (tokens, E); probs the distribution the balance
    loss and statistics use: s itself for softmax, s / sum_e s_e for sigmoid (DeepSeek-V3's normalized affinities)."""
    if score == "sigmoid":
        s = torch.sigmoid(z)
        return s, s / s.sum(dim=-1, keepdim=True)
    s = torch.softmax(z, dim=-1)
    return s, s


def select_top_k(s: Tensor, k: int, bias: Tensor | None) -> Tensor:
    """Indices (tokens, k) of the top-k of s (+ bias (E,), which only selects: loss-free balancing)."""
    key = s.detach() if bias is None else s.detach() + bias.to(s.dtype)
    return key.topk(k, dim=-1).indices


def one_hot_mask(index: Tensor, num_experts: int) -> Tensor:
    """(tokens, k) int64 -> (tokens, E) bool, True on the chosen experts."""
    mask = torch.zeros(index.shape[0], num_experts, dtype=torch.bool, device=index.device)
    return mask.scatter(1, index, True)
