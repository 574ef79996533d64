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

Training and evaluation on the class-folder layout (or a benchmark world):
``build_data(data_config, model=, seed=, rank=, world_size=)`` gives the trainer's batches (``image,
label``; with mixup/cutmix also the soft ``target``; for the retrieval classifier also the class-name
tokens ``class_text, class_padding_mask, num_templates``), :func:`training_step` the official loss and
``evaluate(model, data_config, split="val" | "test")`` top-1/top-5 in either classifier mode (the model
says which). Mixup/cutmix are timm's ``Mixup`` with the official settings, applied when the batch is
made, under RNGs seeded per step. ``data_config`` keys (:data:`DATA_DEFAULTS`): ``root`` (``train/``
and ``val/`` class folders, or a world directory), ``val_folder``, ``classnames`` (default
``classnames.txt``/``.json`` in ``root``), ``templates``, ``tokenizer`` (retrieval classifier only),
``split``, ``batch_size`` (per rank), ``img_size`` (default the model's), ``crop_pct``, ``max_len``
(class names), ``mixup``, ``cutmix``, ``cutmix_minmax``, ``mixup_prob``, ``mixup_switch_prob``,
``mixup_mode``, ``label_smoothing`` (used by the mixed targets and the loss alike), ``quirks``,
``num_workers``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from backbones import BEiT3Backbone
from tasks.finetune_data import (
    DataRoot,
    FinetuneData,
    check_not_empty,
    check_text_fits,
    eval_batches,
    eval_mode,
    first_items,
    load_text_tokenizer,
    merge_config,
    model_img_size,
    resolve_root,
    stack,
)
from tasks.heads import TaskModel, create_task_backbone, init_head_weights, scale_head_, transform_is_train
from tasks.metrics.classification import target_ranks, topk_accuracy
from tasks.retrieval import BEiT3ForRetrieval
from tasks.spec import EvalResult, MetricSpec, TaskSpec, giant_recipe

__all__ = [
    "BEiT3ForImageClassification",
    "CLASSIFIERS",
    "DATA_DEFAULTS",
    "DEFAULT_TEMPLATES",
    "ImageNetRetrievalClassifier",
    "PAPER_RECIPES",
    "RECIPES",
    "build_data",
    "build_eval_dataset",
    "build_imagenet",
    "build_mixup",
    "build_transform",
    "collate",
    "count_classes",
    "evaluate",
    "head_overrides",
    "loss",
    "score_logits",
    "topk_accuracy",
    "training_step",
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


def build_transform(split: str, img_size: int = 224, quirks: str = "fixed", crop_pct: float = 1.0,
                    augment: str = "official"):
    """The official ImageNet transform for ``split`` (``train``, ``val``).

    ImageNet's reported split is ``val``, which the official code evaluates with the eval transform
    (``--eval``); during training the same ``val`` split picks the best checkpoint on *training*
    augmentation. ``quirks="official"`` reproduces that for ``split="val"``; pass ``split="test"`` for
    the final evaluation, which is never augmented.
    """
    from tasks.data.transforms import build_imagenet_transform

    return build_imagenet_transform(is_train=transform_is_train(split, quirks), img_size=img_size, crop_pct=crop_pct,
                                    augment=augment)


# --------------------------------------------------------------------------- training and evaluation
DATA_DEFAULTS: dict[str, Any] = {
    "root": None,  # folder with train/ and val/ class folders, or a benchmark-world directory
    "val_folder": "val",  # the folder of the val and test splits (ImageNet's reported split is val)
    "classnames": None,  # class names file; default classnames.txt/.json in root (retrieval classifier)
    "templates": DEFAULT_TEMPLATES,  # retrieval classifier: format strings with one {}
    "tokenizer": None,  # retrieval classifier: SentencePiece .model, relative to root; default: the world's
    "split": "train",
    "batch_size": 16,  # per rank (the recipes' batch_size is the total)
    "img_size": None,  # default: the model's input size
    "crop_pct": 1.0,
    "max_len": 64,  # class-name tokens (retrieval classifier)
    "augment": "official",  # official | label_safe (synthetic profiles; label_safe: no mixup/cutmix)
    "mixup": 0.8,
    "cutmix": 1.0,
    "cutmix_minmax": None,
    "mixup_prob": 1.0,
    "mixup_switch_prob": 0.5,
    "mixup_mode": "batch",
    "label_smoothing": 0.1,
    "quirks": "fixed",
    "num_workers": 0,
    "skip_bad": False,  # leave out (and count, data.num_skipped) image files that do not open
}


def build_mixup(cfg: Mapping[str, Any], num_classes: int, batch_size: int):
    """timm ``Mixup`` with the official settings, or ``None`` when mixup and cutmix are off (official test)
    or ``augment`` is ``label_safe`` (mixing two images mixes their colour classes)."""
    from timm.data import Mixup

    if cfg.get("augment", "official") == "label_safe" or not (cfg["mixup"] > 0 or cfg["cutmix"] > 0 or cfg["cutmix_minmax"] is not None):
        return None
    if cfg["mixup_mode"] in ("batch", "pair") and batch_size % 2:
        raise ValueError(f"mixup/cutmix in {cfg['mixup_mode']!r} mode mixes pairs of images: batch_size must be even, "
                         f"got {batch_size}")
    return Mixup(mixup_alpha=cfg["mixup"], cutmix_alpha=cfg["cutmix"], cutmix_minmax=cfg["cutmix_minmax"],
                 prob=cfg["mixup_prob"], switch_prob=cfg["mixup_switch_prob"], mode=cfg["mixup_mode"],
                 label_smoothing=cfg["label_smoothing"], num_classes=num_classes)


def collate(
    items: Sequence[Mapping[str, Any]],
    generator: torch.Generator | None = None,
    *,
    mixup: Callable | None = None,
    label_smoothing: float = 0.1,
    class_tokens: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Batch ``image, label`` (class ids); with ``mixup`` the images are mixed and ``target`` holds the
    soft targets (timm draws from the global NumPy RNG, which :class:`FinetuneData` seeds per step).
    ``label_smoothing`` rides along for :func:`training_step`; ``class_tokens`` (retrieval classifier)
    adds ``class_text, class_padding_mask, num_templates``."""
    batch: dict[str, Any] = {"image": stack(items, "image"), "label": stack(items, "label")}
    if mixup is not None:
        batch["image"], batch["target"] = mixup(batch["image"], batch["label"])
    batch["label_smoothing"] = float(label_smoothing)
    if class_tokens is not None:
        batch.update(class_tokens)
    return batch


def _classifier_mode(model: nn.Module) -> str:
    return "retrieval" if isinstance(getattr(model, "module", model), ImageNetRetrievalClassifier) else "linear"


def _prepare(data_config: Mapping[str, Any], model: nn.Module):
    cfg = merge_config(data_config, DATA_DEFAULTS, "imagenet")
    root = resolve_root(cfg, "imagenet")
    cfg["img_size"] = model_img_size(model, cfg["img_size"])
    return cfg, root


def _folder(cfg: Mapping[str, Any], root: DataRoot, split: str, transform_split: str):
    from tasks.data.imagenet import ImageNetFolder

    folder = "train" if split == "train" else cfg["val_folder"] if split in ("val", "test") else None
    if folder is None:
        raise ValueError(f"unknown ImageNet split {split!r}; choose train, val or test (test = the val images "
                         "with the evaluation transform, the reported number)")
    classnames = root.file(cfg["classnames"]) if cfg["classnames"] is not None else None
    transform = build_transform(transform_split, cfg["img_size"], cfg["quirks"], cfg["crop_pct"], cfg["augment"])
    return ImageNetFolder(root.data, folder, transform=transform, classnames=classnames, skip_bad=cfg["skip_bad"])


def _class_names(dataset) -> list[str]:
    if dataset.classnames is None:
        raise ValueError(f"the retrieval classifier needs class names: put classnames.txt or classnames.json in "
                         f"{dataset.root}, or give the data config's 'classnames'")
    return dataset.classnames


def _check_classes(model: nn.Module, dataset) -> None:
    num_classes = getattr(getattr(model, "module", model), "num_classes", None)
    if num_classes is not None and num_classes != len(dataset.classes):
        raise ValueError(f"the model's head has {num_classes} classes but {dataset.root} has {len(dataset.classes)} "
                         f"class folders: build the model with num_classes={len(dataset.classes)}")


def _class_tokens(cfg: Mapping[str, Any], root: DataRoot, model: nn.Module, names: Sequence[str]) -> dict[str, Any]:
    tokenizer = load_text_tokenizer(cfg["tokenizer"], root)
    check_text_fits(getattr(model, "module", model), tokenizer, cfg["max_len"])
    templates = tuple(cfg["templates"])
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"templates must be format strings with one '{{}}', got {list(templates)}")
    encoded = tokenizer([t.format(name) for name in names for t in templates], max_len=cfg["max_len"])
    return {"class_text": encoded["text_ids"], "class_padding_mask": encoded["padding_mask"],
            "num_templates": len(templates)}


def build_data(data_config: dict, *, model: nn.Module, seed: int, rank: int = 0, world_size: int = 1) -> FinetuneData:
    """Training batches (:class:`tasks.finetune_data.FinetuneData`) of ``data_config`` (:data:`DATA_DEFAULTS`)."""
    cfg, root = _prepare(data_config, model)
    dataset = _folder(cfg, root, cfg["split"], "train")
    _check_classes(model, dataset)
    class_tokens = None
    if _classifier_mode(model) == "retrieval":
        class_tokens = _class_tokens(cfg, root, model, _class_names(dataset))
    mixup = build_mixup(cfg, len(dataset.classes), cfg["batch_size"])
    batch_collate = partial(collate, mixup=mixup, label_smoothing=cfg["label_smoothing"], class_tokens=class_tokens)
    return FinetuneData(dataset, batch_collate, batch_size=cfg["batch_size"], seed=seed, rank=rank,
                        world_size=world_size, num_workers=cfg["num_workers"], name=f"ImageNet {cfg['split']}")


def _logits(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    if "class_text" in batch:
        return model(batch["image"], class_text=batch["class_text"], class_padding_mask=batch["class_padding_mask"],
                     num_templates=int(batch["num_templates"]))
    return model(batch["image"])


def training_step(model: nn.Module, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Official ImageNet step: soft-target CE on mixed targets, else label-smoothing CE (``label_smoothing``
    of the batch, 0.1 by default); logs the accuracy (percent) against the batch's class ids."""
    logits = _logits(model, batch)
    target = batch.get("target", batch["label"])
    with torch.no_grad():
        acc = 100.0 * (logits.argmax(dim=-1) == batch["label"]).float().mean()
    return {"loss": loss(logits, target, float(batch.get("label_smoothing", 0.1))), "acc": acc}


def build_eval_dataset(data_config: Mapping[str, Any], split: str, *, model: nn.Module):
    """The class-folder reader :func:`evaluate` scores, with the split's transform (``quirks``)."""
    cfg, root = _prepare(data_config, model)
    return _folder(cfg, root, split, split)


def evaluate(
    model: nn.Module,
    data_config: Mapping[str, Any],
    *,
    split: str = "test",
    limit: int | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> EvalResult:
    """Top-1/top-5 accuracy (percent) on the val images (the first ``limit`` with a limit):
    ``split="test"`` with the evaluation transform (the reported number), ``"val"`` as the official
    model selection (training transform with ``quirks="official"``). The linear head scores directly;
    the retrieval classifier first encodes the class names (``templates``) and scores by cosine similarity.

    Returns:
        Metrics ``acc1``, ``acc5`` (``acc{min(5, classes)}`` with fewer classes), ``num_images``; one
        row per image (:func:`score_logits`).

    Raises:
        EmptySplitError: the split folder holds no images. ValueError: head and class folders differ.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS

    cfg, root = _prepare(data_config, model)
    folder = root.data / cfg["val_folder"]
    if folder.is_dir():
        has_image = any(p.suffix.lower() in IMG_EXTENSIONS for p in folder.rglob("*") if p.is_file())
        check_not_empty(int(has_image), split, "images")
    dataset = _folder(cfg, root, split, split)
    _check_classes(model, dataset)
    if _classifier_mode(model) == "retrieval":
        tokenizer = load_text_tokenizer(cfg["tokenizer"], root)
        check_text_fits(model, tokenizer, cfg["max_len"])
        with eval_mode(model):
            model.build_class_embeddings(_class_names(dataset), tokenizer, tuple(cfg["templates"]), cfg["max_len"])
    indices = first_items(len(dataset), limit)
    logits, labels = [], []
    with eval_mode(model):
        for batch in eval_batches(dataset, partial(collate, label_smoothing=cfg["label_smoothing"]), batch_size,
                                  indices=indices):
            logits.append(model(batch["image"].to(device)).float().cpu())
            labels.append(batch["label"])
    paths = [dataset.samples[i][0] for i in indices]
    return score_logits(torch.cat(logits), torch.cat(labels), paths, classes=dataset.classes, split=split)


def score_logits(logits: torch.Tensor, labels: torch.Tensor, image_ids: Sequence[str], *,
                 classes: Sequence[str] | None = None, split: str = "test") -> EvalResult:
    """One row per image (``item_id`` = ``cluster_id`` its path: the images are independent), the
    top-1 class as ``prediction`` and ``acc1`` / ``acc5`` (100 when the true class ranks within 1 / 5,
    ties to the lower class index as :func:`tasks.metrics.classification.topk_accuracy`)."""
    check_not_empty(logits.shape[0], split, "images")
    if len(image_ids) != logits.shape[0]:
        raise ValueError(f"{len(image_ids)} image ids for {logits.shape[0]} rows of logits")
    topk_accuracy(logits, labels, topk=(1,), split=split)  # the checks of the labels
    ranks = target_ranks(logits.float(), labels.long())
    top1 = logits.argmax(dim=1).tolist()
    items = pd.DataFrame({"item_id": list(image_ids), "cluster_id": list(image_ids),
                          "prediction": [classes[c] for c in top1] if classes is not None else top1,
                          "label": [classes[c] for c in labels.tolist()] if classes is not None else labels.tolist()})
    for k in (1, min(5, logits.shape[1])):
        items[f"acc{k}"] = 100.0 * (ranks < k).double().numpy()
    metrics = {f"acc{k}": float(items[f"acc{k}"].mean()) for k in (1, min(5, logits.shape[1]))}
    return EvalResult({**metrics, "num_images": float(len(items))}, items)

def count_classes(data_config: Mapping[str, Any]) -> int:
    """Class folders of an ImageNet-style training set (the size of the linear head)."""
    cfg = merge_config(data_config, DATA_DEFAULTS, "imagenet")
    folder = resolve_root(cfg, "imagenet").file("train")
    classes = [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    if not classes:
        raise FileNotFoundError(f"no class folders under {folder}: an ImageNet-style train/<class>/ layout is needed")
    return len(classes)


def head_overrides(data_config: Mapping[str, Any], *, model_overrides: Mapping[str, Any], synthetic: bool,
                   official: Mapping[str, Any]) -> dict[str, Any]:
    """The linear head: a world's class count; on real data the official 1000 classes. The retrieval
    classifier has no head size (its classes are the class names)."""
    if model_overrides.get("classifier", "linear") != "linear":
        return {}
    return {"num_classes": count_classes(data_config) if synthetic else int(official["num_classes"])}


SPEC = TaskSpec(
    name="imagenet",
    build_model=build_imagenet,
    build_data=build_data,
    recipes={**RECIPES, "giant": giant_recipe(RECIPES["base"], PAPER_RECIPES["giant"])},
    data_defaults=DATA_DEFAULTS,
    eval_splits=("test",),
    metrics=(MetricSpec("acc1", primary=True, item_column="acc1"), MetricSpec("acc5", item_column="acc5")),
    build_eval=build_eval_dataset,
    evaluate=evaluate,
    training_step=training_step,
    head_overrides=head_overrides,
)
