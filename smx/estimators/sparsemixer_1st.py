"""SparseMixer, first-order variant (the Euler rule of Liu et al., 2023), top-1.

Forward: D ~ masked softmax; gate = p_D (s = 1 always).
Backward (router): dL/dz = 2 <g, E_D> p_D (e_D - p). For a per-token loss linear in the MoE output, the mean of this
estimator over D ~ p equals the exact gradient of E_D[L] (the Euler rule is exact for linear functions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from smx.estimators.sparsemixer import SparseMixer


@dataclass(frozen=True)
class SparseMixerFirstOrder(SparseMixer):
    """Options: jitter_eps (reference 0.1)."""

    name: ClassVar[str] = "sparsemixer_1st"

    def scale(self, is_argmax: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.ones(is_argmax.shape, device=is_argmax.device)
