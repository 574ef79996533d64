"""BEiT-3 backbones: the Multiway Transformer in the released and the paper layout.

>>> import backbones
>>> model = backbones.create_model("beit3_base_patch16_224")            # official keys, beit3.*
>>> giant = backbones.create_model("beit3_giant_patch14_224")           # paper layout, VL-FFN x3
"""
from . import beit3 as _beit3  # noqa: F401  (registers the models)
from ._registry import UnknownModelError, create_model, list_models, register_model
from .beit3 import (
    BEiT3,
    BEiT3Backbone,
    BEiT3Config,
    LAYOUTS,
    layer_id_for_lr_decay,
    no_weight_decay_names,
    resize_vision_pos_table,
)
from .checkpoint import CheckpointError, adapt_state_dict, compare_keys, load_checkpoint, read_state_dict

__all__ = [
    "BEiT3",
    "BEiT3Backbone",
    "BEiT3Config",
    "CheckpointError",
    "LAYOUTS",
    "UnknownModelError",
    "adapt_state_dict",
    "compare_keys",
    "create_model",
    "layer_id_for_lr_decay",
    "list_models",
    "load_checkpoint",
    "no_weight_decay_names",
    "read_state_dict",
    "register_model",
    "resize_vision_pos_table",
]
