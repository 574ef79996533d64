"""BEiT-3 in MMDetection / MMSegmentation: the backbone, ViTDet's simple pyramid, layer-wise lr decay.

Imported on demand only (``import backbones`` never imports mmcv): configs say
``custom_imports = dict(imports=['backbones.mm'], allow_failed_imports=False)``.

Everything is registered in mmengine's root registries, which mmdet's and mmseg's registries search
after their own (``Registry.get`` walks up to the parent), so one registration serves both scopes:

- ``MODELS``: ``BEiT3ViT`` (backbone), ``SimpleFPN`` (neck), ``LN2d`` (norm layer);
- ``OPTIM_WRAPPER_CONSTRUCTORS``: ``BEiT3LayerDecayOptimizerConstructor``.

Importing the package also applies the compatibility shims of ``backbones.mm.compat``.
"""
from . import compat
from .beit3_vit import (
    BEiT3ViT,
    KeyMapReport,
    load_beit3_checkpoint_state,
    remap_beit3_state_dict,
)
from .necks import LN2d, SimpleFPN
from .optim import BEiT3LayerDecayOptimizerConstructor, layer_id

compat.apply()

__all__ = [
    "BEiT3LayerDecayOptimizerConstructor",
    "BEiT3ViT",
    "KeyMapReport",
    "LN2d",
    "SimpleFPN",
    "compat",
    "layer_id",
    "load_beit3_checkpoint_state",
    "remap_beit3_state_dict",
]
