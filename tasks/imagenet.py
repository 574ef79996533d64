"""ImageNet-1K classification (paper Table 9; official ``BEiT3ForImageClassification``,
``ImageNetHandler``; recipe ``get_started_for_image_classification.md``).

Two ways, both built by ``tasks.build_model("imagenet", name, classifier=...)``:

- ``classifier="linear"`` (the released code, default): the image alone through the vision branch
  without the final LayerNorm, the mean of the patch tokens (CLS excluded) -> ``fc_norm`` -> ``head``
  (Linear, scaled by 0.001 at init). Loss: soft-target cross-entropy under mixup/cutmix, else
  label-smoothing cross-entropy (0.1).
- ``classifier="retrieval"`` (the paper's way, code never released, unilm#1611):
  :class:`ImageNetRetrievalClassifier`, the dual encoder of :mod:`tasks.retrieval` with the class
  names as texts. The class names (in each template) are encoded by the language branch, averaged over
  templates and L2-normalised; an image is classified by the cosine of its vision CLS feature with
  every class embedding, scaled by ``logit_scale.exp()``. Its keys are the retrieval model's, so an
  ITC/retrieval checkpoint loads strictly. Training passes the class-name tokens to ``forward`` (the
  class embeddings then carry gradients) and uses the same :func:`loss`; inference uses embeddings
  cached by :meth:`ImageNetRetrievalClassifier.build_class_embeddings`. The paper gives no template;
  the default is the bare class name.

Metric: top-1/top-5 accuracy (:func:`topk_accuracy`). Checked against unilm ``modeling_finetune.py``
and ``engine_for_finetuning.py`` (read, not run), the state-dict dump, and timm's loss classes.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from backbones import BEiT3Backbone
from tasks import register_task
from tasks.heads import TaskModel, create_task_backbone, init_head_weights, scale_head_, transform_is_train
from tasks.metrics.classification import topk_accuracy
from tasks.retrieval import BEiT3ForRetrieval

__all__ = [
    "BEiT3ForImageClassification",
    "CLASSIFIERS",
    "DEFAULT_TEMPLATES",
    "ImageNetRetrievalClassifier",
    "PAPER_RECIPES",
    "RECIPES",
    "build_imagenet",
    "build_transform",
    "loss",
    "topk_accuracy",
]

CLASSIFIERS = ("linear", "retrieval")
DEFAULT_TEMPLATES = ("{}",)

# Official recipes (beit3/get_started/get_started_for_image_classification.md); batch_size is total.
RECIPES: dict[str, dict[str, Any]] = {
    "base": dict(
        model="beit3_base_patch16_224", init_checkpoint="beit3_base_patch16_224.pth", img_size=224,
        batch_size=1024, lr=7e-4, min_lr=1e-6, layer_decay=0.65, head_lr_weight=None, epochs=50,
        warmup_epochs=5, drop_path=0.15, weight_decay=0.05, opt_betas=(0.9, 0.999), opt_eps=1e-8,
        clip_grad=None, label_smoothing=0.1, mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5,
        mixup_mode="batch", randaug="rand-m9-mstd0.5-inc1", color_jitter=0.4, reprob=0.25, crop_pct=1.0,
        num_classes=1000, grad_checkpointing=False, seed=42,
    ),
    "large": dict(
        model="beit3_large_patch16_224", init_checkpoint="beit3_large_patch16_224.pth", img_size=224,
        batch_size=1024, lr=2e-4, min_lr=1e-6, layer_decay=0.8, head_lr_weight=None, epochs=50,
        warmup_epochs=5, drop_path=0.25, weight_decay=0.05, opt_betas=(0.9, 0.999), opt_eps=1e-8,
        clip_grad=None, label_smoothing=0.1, mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5,
        mixup_mode="batch", randaug="rand-m9-mstd0.5-inc1", color_jitter=0.4, reprob=0.25, crop_pct=1.0,
        num_classes=1000, grad_checkpointing=True, seed=42,
    ),
}
# Paper Table 17 (giant, OCR transcript): IN-21K intermediate fine-tuning, then IN-1K, both as a dual
# encoder retrieving the class name.
PAPER_RECIPES: dict[str, dict[str, Any]] = {
    "giant_in21k": dict(
        model="beit3_giant_patch14_224", classifier="retrieval", img_size=224, batch_size=16384, lr=5e-5,
        layer_decay=0.85, epochs=50, warmup_epochs=5, drop_path=0.4, weight_decay=0.05, label_smoothing=0.1,
        source="paper Table 17 (IN-21K)",
    ),
    "giant": dict(
        model="beit3_giant_patch14_224", classifier="retrieval", img_size=336, batch_size=2048, lr=3e-5,
        layer_decay=0.95, epochs=15, warmup_epochs=3, drop_path=0.4, weight_decay=0.05, label_smoothing=0.1,
        source="paper Table 17 (IN-1K)",
    ),
}


class BEiT3ForImageClassification(TaskModel):
    """The official ImageNet model: keys ``beit3.*``, ``fc_norm``, ``head``.

    Args:
        backbone: from ``backbones.create_model(..., normalize_output=False)`` (as the official).
        num_classes: 1000; 0 gives an identity head (features).
        norm_layer: the ``fc_norm`` layer.
    """

    head_patterns = ("fc_norm.*", "head.*")

    def __init__(self, backbone: BEiT3Backbone, num_classes: int = 1000, norm_layer: type[nn.Module] = nn.LayerNorm):
        super().__init__(backbone)
        dim = self.embed_dim
        self.num_classes = num_classes
        self.fc_norm = norm_layer(dim)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.fc_norm.apply(init_head_weights)
        self.head.apply(init_head_weights)
        scale_head_(self.head, 0.001)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of images (B, 3, H, W)."""
        x = self.beit3(visual_tokens=image)["encoder_out"]
        return self.head(self.fc_norm(x[:, 1:].mean(dim=1)))


class ImageNetRetrievalClassifier(BEiT3ForRetrieval):
    """The paper's ImageNet classifier: class-name retrieval with the dual encoder (see module doc).

    State-dict keys equal :class:`tasks.retrieval.BEiT3ForRetrieval`'s; the cached class embeddings are
    a non-persistent buffer.

    Args:
        backbone: from ``backbones.create_model`` (final LayerNorm on, as the retrieval model).
    """

    def __init__(self, backbone: BEiT3Backbone):
        super().__init__(backbone)
        self.register_buffer("class_embeddings", torch.empty(0, self.embed_dim), persistent=False)

    def encode_class_names(
        self, text_ids: torch.Tensor, padding_mask: torch.Tensor | None = None, num_templates: int = 1
    ) -> torch.Tensor:
        """Class embeddings (C, D) from token rows ordered class-major ``(C * num_templates, L)``."""
        if text_ids.shape[0] % num_templates:
            raise ValueError(f"{text_ids.shape[0]} class-name rows are not a multiple of {num_templates} templates")
        features = self.encode_text(text_ids, padding_mask)
        features = features.view(-1, num_templates, features.shape[-1]).mean(dim=1)
        return F.normalize(features, dim=-1)

    @torch.no_grad()
    def build_class_embeddings(
        self,
        class_names: Sequence[str],
        tokenizer: Callable[..., dict[str, torch.Tensor]],
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        max_len: int = 64,
        batch_size: int = 256,
    ) -> torch.Tensor:
        """Encode every class name in every template and cache the result for :meth:`forward`.

        Args:
            class_names: the names in label order (e.g. ``ImageNetFolder``'s class names).
            tokenizer: ``backbones.tokenizers.TextTokenizer`` or any callable ``(texts, max_len) ->
                {"text_ids", "padding_mask"}``.
            templates: format strings with one ``{}`` for the name.
            batch_size: class names encoded per forward.
        """
        if not class_names:
            raise ValueError("no class names to encode")
        if not templates or any("{}" not in t for t in templates):
            raise ValueError(f"templates must be format strings with one '{{}}', got {list(templates)}")
        device = self.logit_scale.device
        chunks = []
        for start in range(0, len(class_names), batch_size):
            names = class_names[start:start + batch_size]
            texts = [template.format(name) for name in names for template in templates]
            tokens = tokenizer(texts, max_len=max_len)
            chunks.append(self.encode_class_names(
                tokens["text_ids"].to(device), tokens["padding_mask"].to(device), num_templates=len(templates)))
        self.class_embeddings = torch.cat(chunks)
        return self.class_embeddings

    def forward(  # type: ignore[override]
        self,
        image: torch.Tensor,
        class_text: torch.Tensor | None = None,
        class_padding_mask: torch.Tensor | None = None,
        num_templates: int = 1,
    ) -> torch.Tensor:
        """Logits (B, C) = ``logit_scale.exp()`` x cosine(image CLS feature, class embeddings).

        Args:
            image: (B, 3, H, W).
            class_text / class_padding_mask: class-name tokens (C * num_templates, L) to encode now
                (training); without them the cached :meth:`build_class_embeddings` are used.
        """
        if class_text is not None:
            classes = self.encode_class_names(class_text, class_padding_mask, num_templates)
        elif self.class_embeddings.shape[0] > 0:
            classes = self.class_embeddings
        else:
            raise ValueError("no class embeddings: call build_class_embeddings(class_names, tokenizer) first, "
                             "or pass class_text")
        return self.logit_scale.exp() * self.encode_image(image) @ classes.t()


@register_task("imagenet")
def build_imagenet(
    model_name: str, num_classes: int | None = None, classifier: str = "linear", **overrides: Any
) -> BEiT3ForImageClassification | ImageNetRetrievalClassifier:
    """``tasks.build_model("imagenet", "beit3_base_patch16_224", drop_path_rate=0.15)``.

    Args:
        num_classes: size of the linear head (default 1000); not an option of the retrieval
            classifier, whose classes are the class names it is given.
        classifier: ``"linear"`` (released code; ``normalize_output`` defaults to False) or
            ``"retrieval"`` (paper; ``normalize_output`` defaults to True).
    """
    if classifier == "linear":
        backbone = create_task_backbone(model_name, {"normalize_output": False}, overrides)
        return BEiT3ForImageClassification(backbone, num_classes=1000 if num_classes is None else num_classes)
    if classifier == "retrieval":
        if num_classes is not None:
            raise ValueError("num_classes is not an option of classifier='retrieval': its classes are the class "
                             "names given to build_class_embeddings (or passed to forward)")
        return ImageNetRetrievalClassifier(create_task_backbone(model_name, {}, overrides))
    raise ValueError(f"unknown ImageNet classifier {classifier!r}; choose one of {', '.join(CLASSIFIERS)}")


def loss(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.1) -> torch.Tensor:
    """Official ImageNet loss: soft-target CE for mixed (N, C) float targets (mixup/cutmix, which also
    smooth), else label-smoothing CE on class ids (plain CE when ``label_smoothing`` is 0)."""
    if target.dtype.is_floating_point:
        if target.shape != logits.shape:
            raise ValueError(f"soft targets {tuple(target.shape)} must match logits {tuple(logits.shape)}")
        return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing)


def build_transform(split: str, img_size: int = 224, quirks: str = "fixed", crop_pct: float = 1.0):
    """The official ImageNet transform for ``split`` (``train``, ``val``).

    ImageNet's reported split is ``val``, which the official code evaluates with the eval transform
    (``--eval``); during training the same ``val`` split picks the best checkpoint on *training*
    augmentation. ``quirks="official"`` reproduces that for ``split="val"``; pass ``split="test"`` for
    the final evaluation, which is never augmented.
    """
    from tasks.data.transforms import build_imagenet_transform

    return build_imagenet_transform(is_train=transform_is_train(split, quirks), img_size=img_size, crop_pct=crop_pct)
