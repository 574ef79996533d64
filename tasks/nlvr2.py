"""NLVR2: does a sentence hold for a pair of images? (paper Table 4; official
``BEiT3ForVisualReasoning``, ``NLVR2Handler``; recipe ``get_started_for_nlvr2.md``).

Each (image, sentence) pair is encoded by the fusion encoder (with the final LayerNorm); the image CLS
and the text BOS of both pairs, ``[v_a; l_a; v_b; l_b]`` (4D), go through LN -> Linear(4D, 2D) -> LN ->
GELU -> Linear(2D, 2), whose two Linears are scaled by 0.001 at init. Cross-entropy loss, accuracy
metric (dev for model selection, test-P reported). Checked against unilm ``modeling_finetune.py`` and
``engine_for_finetuning.py`` (read, not run) and the state-dict dump.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backbones import BEiT3Backbone
from tasks import register_task
from tasks.heads import TaskModel, TwoLayerMLP, create_task_backbone, init_head_weights, scale_head_, transform_is_train
from tasks.metrics.classification import accuracy

__all__ = ["BEiT3ForVisualReasoning", "PAPER_RECIPES", "RECIPES", "accuracy", "build_nlvr2", "build_transform", "loss"]

# Official recipes (beit3/get_started/get_started_for_nlvr2.md); batch_size is the total batch.
RECIPES: dict[str, dict[str, Any]] = {
    "base": dict(
        model="beit3_base_patch16_224", init_checkpoint="beit3_base_patch16_224.pth", img_size=224,
        batch_size=256, lr=7e-4, lr_indomain=5e-4, min_lr=1e-6, layer_decay=0.65, head_lr_weight=None,
        epochs=20, warmup_epochs=5, drop_path=0.2, weight_decay=0.2, opt_betas=(0.9, 0.999), opt_eps=1e-8,
        clip_grad=None, randaug=False, max_text_len=64, grad_checkpointing=False, seed=42,
    ),
    "large": dict(
        model="beit3_large_patch16_224", init_checkpoint="beit3_large_patch16_224.pth", img_size=224,
        batch_size=256, lr=3e-4, lr_indomain=1e-4, min_lr=1e-6, layer_decay=0.85, head_lr_weight=None,
        epochs=20, warmup_epochs=5, drop_path=0.2, weight_decay=0.2, opt_betas=(0.9, 0.999), opt_eps=1e-8,
        clip_grad=None, randaug=False, max_text_len=64, grad_checkpointing=True, seed=42,
    ),
}
# Paper Table 12 (giant, OCR transcript).
PAPER_RECIPES: dict[str, dict[str, Any]] = {
    "giant": dict(
        model="beit3_giant_patch14_224", img_size=224, batch_size=256, lr=1e-3, layer_decay=0.8, epochs=20,
        warmup_epochs=5, drop_path=0.4, weight_decay=0.05, opt_betas=(0.9, 0.999), opt_eps=1e-8,
        source="paper Table 12",
    ),
}


class BEiT3ForVisualReasoning(TaskModel):
    """The official NLVR2 model: keys ``beit3.*`` and ``head.{norm1,dense1,norm2,dense2}``.

    Args:
        backbone: from ``backbones.create_model`` (final LayerNorm on, as the official).
        num_classes: 2 (false / true).
        norm_layer: normalisation inside the head.
    """

    head_patterns = ("head.*",)

    def __init__(self, backbone: BEiT3Backbone, num_classes: int = 2, norm_layer: type[nn.Module] = nn.LayerNorm):
        super().__init__(backbone)
        dim = self.embed_dim
        self.head = TwoLayerMLP(dim * 4, dim * 2, num_classes, norm_layer)
        self.head.apply(init_head_weights)
        scale_head_(self.head.dense1, 0.001)
        scale_head_(self.head.dense2, 0.001)

    def forward(
        self,
        image_a: torch.Tensor,
        image_b: torch.Tensor,
        text_description: torch.Tensor,
        padding_mask: torch.Tensor,
        label: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, 2).

        Args:
            image_a, image_b: (B, 3, H, W) the left and right image.
            text_description: (B, L) token ids.
            padding_mask: (B, L), 1 on padding.
            label: not used by the model (the loss is :func:`loss`); accepted so a batch dict can be
                passed as keyword arguments.
        """
        batch = text_description.shape[0]
        out = self.beit3(
            textual_tokens=torch.cat([text_description, text_description]),
            visual_tokens=torch.cat([image_a, image_b]),
            text_padding_position=torch.cat([padding_mask, padding_mask]),
        )
        x = out["encoder_out"]
        pair = torch.cat([x[:, 0], x[:, out["multiway_split_position"]]], dim=-1)  # [image CLS; text BOS]
        left, right = pair.split([batch, batch])
        return self.head(torch.cat([left, right], dim=-1))


@register_task("nlvr2")
def build_nlvr2(model_name: str, num_classes: int = 2, **overrides: Any) -> BEiT3ForVisualReasoning:
    """``tasks.build_model("nlvr2", "beit3_base_patch16_224", drop_path_rate=0.2)``."""
    backbone = create_task_backbone(model_name, {}, overrides)
    return BEiT3ForVisualReasoning(backbone, num_classes=num_classes)


def loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Official NLVR2 loss: cross-entropy."""
    return F.cross_entropy(logits, label)


def build_transform(split: str, img_size: int = 224, quirks: str = "fixed", randaug: bool = False):
    """The official VL image transform for ``split`` (``train``, ``dev``/``val``, ``test1``/``test``).

    ``quirks="official"`` gives the dev split the training augmentation, as the official loader.
    """
    from tasks.data.transforms import build_vl_transform

    return build_vl_transform(is_train=transform_is_train(split, quirks), img_size=img_size, randaug=randaug)
