"""Layer-wise learning-rate decay for ``BEiT3ViT`` detectors and segmentors (mmengine constructor).

Layer ids follow the official BEiT-3 / BEiT rule on this backbone's parameter names: the patch conv,
the position table and the cls token are layer 0, ``backbone.blocks.N`` is layer N+1, everything else
(the final norm, necks, heads) is layer ``num_layers + 1``; the lr of layer ``i`` is
``base_lr * decay_rate ** (num_layers + 1 - i)`` (as mmseg's ``LearningRateDecayOptimizerConstructor``
and ViTDet's ``LayerDecayOptimizerConstructor``, whose name rules do not fit our names).
Weight decay is off for 1-d parameters and biases (norms), the position table, the cls token,
ViTDet's relative position tables and the query/level embeddings of query-based heads (Mask2Former).
"""
from __future__ import annotations

import re
from typing import Any

from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

__all__ = ["BEiT3LayerDecayOptimizerConstructor", "layer_id"]

NO_DECAY_NAMES = ("pos_embed", "cls_token", "rel_pos_h", "rel_pos_w", "query_embed", "query_feat", "level_embed")
_BLOCK_RX = re.compile(r"^backbone\.blocks\.(\d+)\.")


def layer_id(name: str, num_layers: int) -> int:
    """The lr-decay layer id of a detector/segmentor parameter name."""
    if name in ("backbone.cls_token", "backbone.pos_embed") or name.startswith("backbone.patch_embed."):
        return 0
    match = _BLOCK_RX.match(name)
    if match:
        return int(match.group(1)) + 1
    return num_layers + 1


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class BEiT3LayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """``paramwise_cfg=dict(decay_rate=0.9, num_layers=None)``.

    ``num_layers`` defaults to the backbone's depth. ``decay_rate=1`` gives one lr for all.
    """

    def add_params(self, params: list[dict], module: nn.Module, prefix: str = "", **kwargs: Any) -> None:
        cfg = dict(self.paramwise_cfg or {})
        unknown = sorted(set(cfg) - {"decay_rate", "num_layers"})
        if unknown:
            raise ValueError(
                f"BEiT3LayerDecayOptimizerConstructor: unknown paramwise_cfg key(s) {unknown}; "
                "valid: decay_rate, num_layers"
            )
        if "decay_rate" not in cfg:
            raise ValueError("BEiT3LayerDecayOptimizerConstructor needs paramwise_cfg=dict(decay_rate=...)")
        decay_rate = float(cfg["decay_rate"])
        backbone = getattr(module, "backbone", None)
        num_layers = cfg.get("num_layers")
        if num_layers is None:
            if backbone is None or not hasattr(backbone, "get_num_layers"):
                raise ValueError("paramwise_cfg.num_layers is needed: the model's backbone has no get_num_layers()")
            num_layers = backbone.get_num_layers()
        num_layers = int(num_layers)

        groups: dict[str, dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            leaf = name.rsplit(".", 1)[-1]
            no_decay = param.ndim <= 1 or name.endswith(".bias") or leaf in NO_DECAY_NAMES
            lid = layer_id(name, num_layers)
            key = f"layer_{lid}_{'no_decay' if no_decay else 'decay'}"
            if key not in groups:
                scale = decay_rate ** (num_layers + 1 - lid)
                groups[key] = {"params": [], "param_names": [], "lr_scale": scale, "lr": scale * self.base_lr}
                if no_decay or self.base_wd is not None:
                    groups[key]["weight_decay"] = 0.0 if no_decay else self.base_wd
            groups[key]["params"].append(param)
            groups[key]["param_names"].append(name)
        summary = ", ".join(f"{k}: {len(g['params'])} @ x{g['lr_scale']:.3g}" for k, g in sorted(groups.items()))
        print_log(f"layer-wise lr decay {decay_rate} over {num_layers} layers: {summary}", logger="current")
        params.extend(groups.values())
