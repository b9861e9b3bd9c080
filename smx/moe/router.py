"""The router: a float32 Linear d_model -> n_experts with optional multiplicative input jitter.

Routing always runs in float32 whatever the model dtype: autocast is disabled around it and the input and the
parameters are cast to float32 (a model converted with .half() keeps working; its router still computes in float32).
The jitter touches only the router input, never the expert input, and only in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def jitter_input(x: Tensor, eps: float, generator: torch.Generator | None) -> Tensor:
    """x * U(1 - eps, 1 + eps) elementwise (a new tensor; x is not modified). (tokens, d_model)."""
    noise = torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator)  # (tokens, d_model) U(0, 1)
    return x * (1.0 - eps + 2.0 * eps * noise)


class Router(nn.Module):
    """logits = W x (+ b), in float32. Parameters are created in float32 and initialized like nn.Linear."""

    def __init__(self, d_model: int, num_experts: int, bias: bool = False, input_jitter: float = 0.0) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, num_experts, bias=bias, dtype=torch.float32)
        self.input_jitter = float(input_jitter)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x (tokens, d_model) any float dtype -> logits (tokens, n_experts) float32."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            x32 = x.float()  # (tokens, d_model)
            if self.training and self.input_jitter > 0:
                x32 = jitter_input(x32, self.input_jitter, generator)
            weight = self.proj.weight.float()  # (n_experts, d_model)
            bias = None if self.proj.bias is None else self.proj.bias.float()
            return F.linear(x32, weight, bias)  # (tokens, n_experts)
