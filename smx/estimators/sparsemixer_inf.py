"""SparseMixer with a Monte-Carlo integral scale ("infinite order"), top-1.

Forward: D ~ masked softmax; gate = s * p_D with s = 1 if D is the argmax or with probability 1/2, else s ~ U(0, 1)
(a one-sample Monte-Carlo estimate of the integral that v1's mid-point rule approximates by s = 1/2).
Backward (router): as v1, dL/dz = 2 <g, E_D> p_D (e_D - p).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from smx.estimators.base import uniform
from smx.estimators.sparsemixer import SparseMixer


@dataclass(frozen=True)
class SparseMixerIntegral(SparseMixer):
    """Options: jitter_eps (reference 0.1)."""

    name: ClassVar[str] = "sparsemixer_inf"

    def scale(self, is_argmax: Tensor, generator: torch.Generator | None) -> Tensor:
        u = uniform(is_argmax.shape, is_argmax.device, generator)
        s = uniform(is_argmax.shape, is_argmax.device, generator)
        return torch.where(is_argmax | (u > 0.5), 1.0, s).float()
