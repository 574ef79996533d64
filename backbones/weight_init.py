"""unilm's weight init of Linear and LayerNorm layers, shared by the backbones and the task heads."""
from __future__ import annotations

from torch import nn

__all__ = ["INIT_STD", "init_linear_and_norm"]

INIT_STD = 0.02


def init_linear_and_norm(module: nn.Module) -> None:
    """unilm ``BEiT3Wrapper._init_weights`` for one module: a Linear gets a truncated normal weight
    (std .02, cut at ±.02) and a zero bias, a LayerNorm weight 1 and bias 0; other modules are left
    alone. Use as ``model.apply(init_linear_and_norm)``."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=INIT_STD, a=-INIT_STD, b=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
