"""The MoE feed-forward layer (DESIGN.md section 5): router, index-based dispatch, aux losses, routing statistics.

Plain PyTorch; imports only smx.estimators (never fairseq).
"""

from smx.moe.config import MoEConfig
from smx.moe.layer import MoEFeedForward, MoEOutput
from smx.moe.losses import RoutingStats

__all__ = ["MoEConfig", "MoEFeedForward", "MoEOutput", "RoutingStats"]
