"""Image-text retrieval (COCO 5k, Flickr30K 1k): BEiT-3 as a dual encoder (paper Table 5; official
``BEiT3ForRetrieval``, ``ClipLoss``, ``RetrievalHandler``; recipe ``get_started_for_retrieval.md``).

Images and texts are encoded separately (with the final LayerNorm); the image CLS and the text BOS
go through ``vision_head`` / ``language_head`` (Linear D->D, no bias) and are L2-normalised. Training
uses the symmetric contrastive loss with a learned temperature (``logit_scale``, init log(1/0.07),
not clamped), features all-gathered across ranks *with* gradients and labels ``arange(n) + rank * n``.
Evaluation: :func:`tasks.metrics.retrieval.retrieval_recalls`. Fine-tuning starts from the ``*_itc``
checkpoints (the released result of the paper's intermediate image-text contrastive tuning). Checked
against unilm ``modeling_finetune.py``, ``utils.py::ClipLoss/GatherLayer`` and
``engine_for_finetuning.py`` (read, not run), the state-dict dump, and a two-process test of the
gathered loss.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backbones import BEiT3Backbone
from tasks import register_task
from tasks.distributed import all_gather_with_grad, get_rank, get_world_size
from tasks.heads import TaskModel, create_task_backbone, init_head_weights, transform_is_train
from tasks.metrics.retrieval import dedup_image_features, retrieval_recalls

__all__ = [
    "BEiT3ForRetrieval",
    "FLICKR30K_RECIPES",
    "LOGIT_SCALE_INIT",
    "PAPER_RECIPES",
    "RECIPES",
    "build_retrieval",
    "build_transform",
    "clip_loss",
    "dedup_image_features",
    "loss",
    "recipe",
    "retrieval_recalls",
]

LOGIT_SCALE_INIT = math.log(1 / 0.07)

# Official recipes (beit3/get_started/get_started_for_retrieval.md), COCO; batch_size is the total batch.
RECIPES: dict[str, dict[str, Any]] = {
    "base": dict(
        model="beit3_base_patch16_384", init_checkpoint="beit3_base_itc_patch16_224.pth", img_size=384,
        batch_size=3072, lr=2e-4, min_lr=1e-6, layer_decay=0.65, head_lr_weight=None, epochs=15,
        warmup_epochs=3, drop_path=0.2, weight_decay=0.05, opt_betas=(0.9, 0.999), opt_eps=1e-8,
        clip_grad=None, randaug=False, max_text_len=64, grad_checkpointing=True, seed=42,
    ),
    "large": dict(
        model="beit3_large_patch16_384", init_checkpoint="beit3_large_itc_patch16_224.pth", img_size=384,
        batch_size=3072, lr=5e-5, min_lr=1e-6, layer_decay=0.85, head_lr_weight=None, epochs=15,
        warmup_epochs=3, drop_path=0.2, weight_decay=0.05, opt_betas=(0.9, 0.999), opt_eps=1e-8,
        clip_grad=None, randaug=False, max_text_len=64, grad_checkpointing=True, seed=42,
    ),
}
# Flickr30K: base lr 1e-4, 20 epochs (5 warm-up); the guide gives no other large lr than COCO's.
FLICKR30K_RECIPES: dict[str, dict[str, Any]] = {
    "base": {**RECIPES["base"], "lr": 1e-4, "epochs": 20, "warmup_epochs": 5},
    "large": {**RECIPES["large"], "epochs": 20, "warmup_epochs": 5},
}
# Paper Table 14 (giant, OCR transcript).
PAPER_RECIPES: dict[str, dict[str, Any]] = {
    "giant": dict(
        model="beit3_giant_patch14_224", img_size=420, batch_size=3072, lr=1e-5, layer_decay=0.95,
        epochs=15, warmup_epochs=3, drop_path=0.3, weight_decay=0.05, source="paper Table 14 (COCO)",
    ),
    "giant_flickr30k": dict(
        model="beit3_giant_patch14_224", img_size=420, batch_size=3072, lr=1e-5, layer_decay=0.95,
        epochs=20, warmup_epochs=5, drop_path=0.3, weight_decay=0.05, source="paper Table 14 (Flickr30K)",
    ),
}


def recipe(size: str, dataset: str = "coco") -> dict[str, Any]:
    """The official recipe of ``size`` (``base``/``large``) for ``dataset`` (``coco``/``flickr30k``)."""
    tables = {"coco": RECIPES, "flickr30k": FLICKR30K_RECIPES}
    if dataset not in tables:
        raise ValueError(f"unknown retrieval dataset {dataset!r}; choose coco or flickr30k")
    if size not in tables[dataset]:
        sizes = ", ".join(tables[dataset])
        raise ValueError(f"no official {dataset} retrieval recipe for size {size!r}; sizes: {sizes}")
    return dict(tables[dataset][size])


def clip_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Official ``ClipLoss``: symmetric cross-entropy over the global batch.

    Each rank scores its own features against every rank's (gathered with gradients), with labels
    ``arange(n) + rank * n``; rank and world size are those of the current process group (a single
    process without one is rank 0 of 1).

    Args:
        image_features, text_features: (n, D) normalised features of this rank (same n on every rank).
        logit_scale: the temperature already exponentiated (``model.logit_scale.exp()``).

    Returns:
        ``(loss, logits_per_image, logits_per_text)``, logits of shape (n, world_size * n).
    """
    if image_features.shape != text_features.shape:
        raise ValueError(f"image features {tuple(image_features.shape)} and text features "
                         f"{tuple(text_features.shape)} must pair up row by row")
    rank, world_size = get_rank(), get_world_size()
    if world_size > 1:
        all_image, all_text = all_gather_with_grad(image_features), all_gather_with_grad(text_features)
    else:
        all_image, all_text = image_features, text_features
    logits_per_image = logit_scale * image_features @ all_text.t()
    logits_per_text = logit_scale * text_features @ all_image.t()
    num = logits_per_image.shape[0]
    labels = torch.arange(num, device=image_features.device) + num * rank
    total = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
    return total, logits_per_image, logits_per_text


class BEiT3ForRetrieval(TaskModel):
    """The official dual-encoder model: keys ``logit_scale``, ``beit3.*``, ``language_head``, ``vision_head``.

    Args:
        backbone: from ``backbones.create_model`` (final LayerNorm on, as the official).
    """

    head_patterns = ("language_head.*", "vision_head.*", "logit_scale")

    def __init__(self, backbone: BEiT3Backbone):
        super().__init__(backbone)
        dim = self.embed_dim
        self.language_head = nn.Linear(dim, dim, bias=False)
        self.vision_head = nn.Linear(dim, dim, bias=False)
        self.language_head.apply(init_head_weights)
        self.vision_head.apply(init_head_weights)
        self.logit_scale = nn.Parameter(torch.full((), LOGIT_SCALE_INIT))

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """L2-normalised ``vision_head`` of the image CLS, (B, D)."""
        x = self.beit3(visual_tokens=image)["encoder_out"]
        return F.normalize(self.vision_head(x[:, 0]), dim=-1)

    def encode_text(self, text_description: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised ``language_head`` of the text BOS, (B, D)."""
        x = self.beit3(textual_tokens=text_description, text_padding_position=padding_mask)["encoder_out"]
        return F.normalize(self.language_head(x[:, 0]), dim=-1)

    def forward(
        self,
        image: torch.Tensor | None = None,
        text_description: torch.Tensor | None = None,
        padding_mask: torch.Tensor | None = None,
        only_infer: bool = False,
    ):
        """As the official: ``(vision_cls, language_cls)`` with ``only_infer`` (either may be None),
        else ``(loss, vision_cls, language_cls)`` with the contrastive loss (both inputs needed)."""
        vision_cls = self.encode_image(image) if image is not None else None
        language_cls = self.encode_text(text_description, padding_mask) if text_description is not None else None
        if only_infer:
            return vision_cls, language_cls
        if vision_cls is None or language_cls is None:
            raise ValueError("the retrieval loss needs both image and text_description; pass only_infer=True "
                             "to encode one modality")
        total, _, _ = clip_loss(vision_cls, language_cls, self.logit_scale.exp())
        return total, vision_cls, language_cls


@register_task("retrieval")
def build_retrieval(model_name: str, **overrides: Any) -> BEiT3ForRetrieval:
    """``tasks.build_model("retrieval", "beit3_base_patch16_384", drop_path_rate=0.2)``."""
    backbone = create_task_backbone(model_name, {}, overrides)
    return BEiT3ForRetrieval(backbone)


def loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """The retrieval training loss of one rank (:func:`clip_loss` without the logits)."""
    return clip_loss(image_features, text_features, logit_scale)[0]


def build_transform(split: str, img_size: int = 384, quirks: str = "fixed", randaug: bool = False):
    """The official VL image transform for ``split`` (``train``, ``val``, ``test``).

    ``quirks="official"`` gives the validation split the training augmentation, as the official loader.
    """
    from tasks.data.transforms import build_vl_transform

    return build_vl_transform(is_train=transform_is_train(split, quirks), img_size=img_size, randaug=randaug)
