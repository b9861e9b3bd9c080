"""smx: head-to-head router gradient estimators for Switch Transformer MoE models."""

__version__ = "0.1.0"
