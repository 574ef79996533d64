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

Training and evaluation on the real file layout (or a benchmark world):
``build_data(data_config, model=, seed=, rank=, world_size=)`` gives the trainer's batches (the
official keys ``image, language_tokens, padding_mask, image_id``), :func:`training_step` the ClipLoss
the model returns, ``evaluate(model, data_config, split="val" | "test")`` the recalls. Evaluating a
model that was not fine-tuned (e.g. built with ``tasks.build_model("retrieval", ...)`` and loaded from
a pretraining or ITC checkpoint) is the zero-shot evaluation; nothing else changes.

The paper's intermediate ITC stage (Table 10: pretrain -> ITC on the pretraining image-text pairs ->
retrieval fine-tuning) is ``data_config["source"] = "pretraining_pairs"`` with :data:`ITC_RECIPE`: the
same model and loss on pairs streamed from WebDataset shards (``shards``), not the Karpathy captions.
Its result is what the released ``*_itc`` checkpoints hold.

``data_config`` keys (:data:`DATA_DEFAULTS`): ``root`` (official ``data_path`` with the images and the
Karpathy file, or a world directory), ``dataset`` (``coco`` / ``flickr30k``), ``annotation`` (default
``dataset_coco.json`` / ``dataset_flickr30k.json``), ``source`` (``karpathy`` / ``pretraining_pairs``),
``shards`` (pretraining pairs: a brace pattern, glob or list relative to ``root``; a world's pairs by
default), ``shuffle_buffer`` (pairs), ``tokenizer``, ``split``, ``batch_size`` (per rank), ``img_size``
(default the model's), ``max_len``, ``randaug``, ``quirks``, ``num_workers``, ``gallery_size`` (evaluation).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from backbones import BEiT3Backbone
from tasks.distributed import all_gather_with_grad, get_rank, get_world_size
from tasks.finetune_data import (
    DataRoot,
    FinetuneData,
    TransformFields,
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
    to_device,
)
from tasks.heads import TaskModel, create_task_backbone, init_head_weights, transform_is_train
from tasks.metrics.retrieval import dedup_image_features, retrieval_ranks, retrieval_recalls
from tasks.spec import EvalResult, MetricSpec, TaskSpec, giant_recipe

__all__ = [
    "BEiT3ForRetrieval",
    "DATA_DEFAULTS",
    "FLICKR30K_RECIPES",
    "ITC_RECIPE",
    "LOGIT_SCALE_INIT",
    "PAPER_RECIPES",
    "RECIPES",
    "build_data",
    "build_eval_dataset",
    "build_retrieval",
    "build_transform",
    "clip_loss",
    "collate",
    "dedup_image_features",
    "evaluate",
    "loss",
    "recipe",
    "retrieval_recalls",
    "score_features",
    "training_step",
]

LOGIT_SCALE_INIT = math.log(1 / 0.07)
RECALL_CUTOFFS = (1, 5, 10)

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
    # VLMo's retrieval finetuning starts from the ITC heads and temperature its pretraining trained.
    pretrained_heads = {"itc_vision_head.weight": "vision_head.weight",
                        "itc_language_head.weight": "language_head.weight", "logit_scale": "logit_scale"}

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


def build_retrieval(model_name: str, **overrides: Any) -> BEiT3ForRetrieval:
    """``tasks.build_model("retrieval", "beit3_base_patch16_384", drop_path_rate=0.2)``."""
    backbone = create_task_backbone(model_name, {}, overrides)
    return BEiT3ForRetrieval(backbone)


def loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """The retrieval training loss of one rank (:func:`clip_loss` without the logits)."""
    return clip_loss(image_features, text_features, logit_scale)[0]


def build_transform(split: str, img_size: int = 384, quirks: str = "fixed", randaug: bool = False,
                    augment: str = "official"):
    """The official VL image transform for ``split`` (``train``, ``val``, ``test``).

    ``quirks="official"`` gives the validation split the training augmentation, as the official loader.
    """
    from tasks.data.transforms import build_vl_transform

    return build_vl_transform(is_train=transform_is_train(split, quirks), img_size=img_size, randaug=randaug,
                              augment=augment)


# ------------------------------------------------------------------- the intermediate ITC stage (Table 10)
# Paper App. A, the ITC stage between pretraining and retrieval fine-tuning: batch size "16k" (read as
# 16384), 5 epochs on the pretraining image-text pairs, 224x224 images.
ITC_RECIPE: dict[str, Any] = dict(
    data_source="pretraining_pairs", img_size=224, batch_size=16384, epochs=5, lr=3e-5, layer_decay=0.95,
    drop_path=0.3, opt_betas=(0.9, 0.999), next_stage="retrieval fine-tuning (RECIPES / PAPER_RECIPES)",
    source="paper App. A (Table 10: pretrain -> ITC -> retrieval)",
)

# --------------------------------------------------------------------------- training and evaluation
DATA_DEFAULTS: dict[str, Any] = {
    "root": None,  # official data_path (images + Karpathy file), or a benchmark-world directory
    "dataset": "coco",  # coco | flickr30k
    "annotation": None,  # default dataset_coco.json / dataset_flickr30k.json, relative to the data root
    "source": "karpathy",  # karpathy | pretraining_pairs (the intermediate ITC stage)
    "shards": None,  # pretraining pairs: brace pattern / glob / list relative to root; default: a world's pairs
    "shuffle_buffer": 0,  # pretraining pairs: seeded shuffle buffer (0: shard order)
    "tokenizer": None,  # SentencePiece .model, relative to root; default: the world's
    "split": "train",  # train (Karpathy train + restval) | val | test
    "batch_size": 16,  # per rank (the recipes' batch_size is the total; the loss gathers all ranks)
    "img_size": None,  # default: the model's input size
    "max_len": 64,
    "randaug": False,
    "augment": "official",  # official | label_safe (synthetic profiles; tasks.data.transforms)
    "quirks": "fixed",
    "num_workers": 0,
    "skip_bad": False,  # skip (and count, data.num_skipped) malformed records instead of raising
    # Evaluation: images per gallery, scored as the mean over consecutive galleries (COCO's "1K test");
    # default the world's ``gallery_size`` (world.json), else the whole split as one gallery.
    "gallery_size": None,
}
DATASETS = {"coco": ("coco_karpathy", "dataset_coco.json"), "flickr30k": ("flickr30k", "dataset_flickr30k.json")}
SOURCES = ("karpathy", "pretraining_pairs")


def collate(
    items: Sequence[Mapping[str, Any]], generator: torch.Generator | None = None, *, tokenizer: Any, max_len: int
) -> dict[str, torch.Tensor]:
    """Batch with the official keys ``image, language_tokens, padding_mask`` and ``image_id`` (Karpathy
    rows; pretraining pairs have no image id)."""
    encoded = tokenizer([item["text"] for item in items], max_len=max_len)
    batch = {"image": stack(items, "image"), "language_tokens": encoded["text_ids"],
             "padding_mask": encoded["padding_mask"]}
    if all("image_id" in item for item in items):
        batch["image_id"] = stack(items, "image_id")
    return batch


def _prepare(data_config: Mapping[str, Any], model: nn.Module):
    cfg = merge_config(data_config, DATA_DEFAULTS, "retrieval")
    if cfg["dataset"] not in DATASETS:
        raise ValueError(f"unknown retrieval dataset {cfg['dataset']!r}; choose one of {', '.join(DATASETS)}")
    if cfg["source"] not in SOURCES:
        raise ValueError(f"unknown retrieval data source {cfg['source']!r}; choose one of {', '.join(SOURCES)}")
    world_name = "pairs" if cfg["source"] == "pretraining_pairs" else DATASETS[cfg["dataset"]][0]
    root = resolve_root(cfg, world_name)
    tokenizer = load_text_tokenizer(cfg["tokenizer"], root)
    check_text_fits(model, tokenizer, cfg["max_len"])
    cfg["img_size"] = model_img_size(model, cfg["img_size"])
    return cfg, root, tokenizer


def _annotation(cfg: Mapping[str, Any], root: DataRoot) -> Path:
    return root.file(cfg["annotation"] or DATASETS[cfg["dataset"]][1])


def _karpathy(cfg: Mapping[str, Any], root: DataRoot, split: str, transform_split: str):
    from tasks.data.karpathy import KarpathyCaptions

    transform = build_transform(transform_split, cfg["img_size"], cfg["quirks"], cfg["randaug"], cfg["augment"])
    return KarpathyCaptions(_annotation(cfg, root), root.data, split, task="retrieval", transform=transform,
                            skip_bad=cfg["skip_bad"])


def _pair_shards(cfg: Mapping[str, Any], root: DataRoot) -> list[str] | str:
    shards = cfg["shards"]
    if shards is None:
        entry = root.world_entry("pairs")
        if entry is None:
            raise ValueError("source='pretraining_pairs' needs 'shards': the WebDataset shards of the pretraining "
                             "image-text pairs (a brace pattern, a glob or a list, relative to root)")
        shards = entry["shards"]
    if isinstance(shards, str):
        return shards if "://" in shards or Path(shards).is_absolute() else str(root.base / shards)
    return [str(root.base / s) for s in shards]


def build_data(data_config: dict, *, model: nn.Module, seed: int, rank: int = 0, world_size: int = 1) -> FinetuneData:
    """Training batches (:class:`tasks.finetune_data.FinetuneData`) of ``data_config`` (:data:`DATA_DEFAULTS`):
    Karpathy caption rows (one per caption, official), or the pretraining pairs for the ITC stage."""
    cfg, root, tokenizer = _prepare(data_config, model)
    batch_collate = partial(collate, tokenizer=tokenizer, max_len=cfg["max_len"])
    common = {"batch_size": cfg["batch_size"], "seed": seed, "rank": rank, "world_size": world_size}
    if cfg["source"] == "pretraining_pairs":
        from tasks.data.pretraining import ImageTextShards

        if cfg["num_workers"]:
            raise ValueError("num_workers is not supported with source='pretraining_pairs' (a stream); set it to 0")
        pairs = ImageTextShards(_pair_shards(cfg, root), rank=rank, world_size=world_size, shuffle_shards=True,
                                seed=seed, skip_bad=cfg["skip_bad"])
        transform = build_transform("train", cfg["img_size"], cfg["quirks"], cfg["randaug"], cfg["augment"])
        return FinetuneData(pairs, batch_collate, item_fn=TransformFields(transform), shuffle_buffer=cfg["shuffle_buffer"],
                            name="retrieval ITC pretraining pairs", **common)
    return FinetuneData(_karpathy(cfg, root, cfg["split"], "train"), batch_collate, num_workers=cfg["num_workers"],
                        name=f"retrieval {cfg['dataset']} {cfg['split']}", **common)


def training_step(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``RetrievalHandler.train_batch``: the model returns the ClipLoss. Logs the in-batch
    image->text and text->image accuracy (percent, this rank's rows) and the temperature."""
    total, vision_cls, language_cls = model(image=batch["image"], text_description=batch["language_tokens"],
                                            padding_mask=batch["padding_mask"])
    with torch.no_grad():
        scores = vision_cls @ language_cls.t()
        target = torch.arange(scores.shape[0], device=scores.device)
        i2t = 100.0 * (scores.argmax(dim=1) == target).float().mean()
        t2i = 100.0 * (scores.argmax(dim=0) == target).float().mean()
        scale = getattr(model, "module", model).logit_scale.detach().exp()
    return {"loss": total, "i2t_acc": i2t, "t2i_acc": t2i, "logit_scale": scale}


def build_eval_dataset(data_config: Mapping[str, Any], split: str, *, model: nn.Module):
    """The Karpathy reader :func:`evaluate` encodes, with the split's transform (``quirks``)."""
    cfg, root, _ = _prepare({**data_config, "source": "karpathy"}, model)
    return _karpathy(cfg, root, split, split)


def evaluate(
    model: nn.Module,
    data_config: Mapping[str, Any],
    *,
    split: str = "test",
    limit: int | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> EvalResult:
    """Image->text and text->image recalls on a Karpathy split (COCO 5k / Flickr30K 1k test); with a
    ``limit``, among its first ``limit`` images and their captions.

    Each image and each caption is encoded once (``only_infer``); :func:`score_features` ranks them.
    With a model that was not fine-tuned this is the zero-shot evaluation.

    Returns:
        Metrics ``tr_r1, tr_r5, tr_r10, ir_r1, ir_r5, ir_r10, average_score`` (percent), ``num_images``,
        ``num_captions``; one row per query (image and caption).

    Raises:
        EmptySplitError: the split has no images.
    """
    from tasks.data.karpathy import read_karpathy

    cfg, root, tokenizer = _prepare({**data_config, "source": "karpathy"}, model)
    records, _ = read_karpathy(_annotation(cfg, root), split)
    check_not_empty(len(records), split, "images")
    dataset = _karpathy(cfg, root, split, split)
    first_row: dict[int, int] = {}
    for index, row in enumerate(dataset.rows):
        first_row.setdefault(int(row["image_id"]), index)
    kept = set(list(first_row)[i] for i in first_items(len(first_row), limit))
    first_row = {image_id: row for image_id, row in first_row.items() if image_id in kept}
    image_ids = torch.tensor(list(first_row))
    captions = [index for index, row in enumerate(dataset.rows) if int(row["image_id"]) in kept]
    texts = [dataset.rows[i]["text"] for i in captions]
    text_to_image = torch.tensor([int(dataset.rows[i]["image_id"]) for i in captions])

    image_feats, text_feats = [], []
    with eval_mode(model):
        images = eval_batches(dataset, lambda items: {"image": stack(items, "image")}, batch_size,
                              indices=list(first_row.values()))
        for batch in images:
            image_feats.append(model(image=batch["image"].to(device), only_infer=True)[0].float().cpu())
        for start in range(0, len(texts), batch_size):
            encoded = to_device(tokenizer(texts[start:start + batch_size], max_len=cfg["max_len"]), device)
            text_feats.append(model(text_description=encoded["text_ids"], padding_mask=encoded["padding_mask"],
                                    only_infer=True)[1].float().cpu())
    entry = root.world_entry(DATASETS[cfg["dataset"]][0]) or {}
    return score_features(torch.cat(image_feats), torch.cat(text_feats), text_to_image, image_ids,
                          caption_ids=captions, split=split, gallery_size=cfg["gallery_size"] or entry.get("gallery_size"))


def score_features(image_feats: torch.Tensor, text_feats: torch.Tensor, text_to_image: torch.Tensor,
                   image_ids: torch.Tensor, *, caption_ids: Sequence[int] | None = None,
                   split: str = "test", gallery_size: int | None = None) -> EvalResult:
    """Rank every image against the captions and every caption against the images
    (:func:`tasks.metrics.retrieval.retrieval_ranks`): one row per query.

    Image queries (``direction`` ``i2t``, ``item_id`` ``i2t:<image id>``) carry ``tr_r1/5/10``, caption
    queries (``t2i``, ``t2i:<caption>``, the caption's index in the split unless ``caption_ids`` name
    it) ``ir_r1/5/10``: 100 for a hit at k, else 0, empty in the other direction's rows. ``rank`` is
    the 1-based rank of the true match (an image's best-ranked caption), ``cluster_id`` the image the
    query belongs to, ``prediction`` the image of the first-ranked result.

    With ``gallery_size``, the images (in order) form consecutive galleries of that many images, each
    with its captions; a query is ranked within its gallery (column ``gallery``), and the recalls are the
    mean over all queries, which is the mean over the galleries when they are equal (COCO's "1K test").
    """
    caption_ids = list(range(len(text_to_image))) if caption_ids is None else list(caption_ids)
    if not gallery_size:
        items = _ranked_rows(image_feats, text_feats, text_to_image, image_ids, caption_ids, split)
    else:
        frames = []
        for gallery, start in enumerate(range(0, len(image_ids), gallery_size)):
            ids = image_ids[start:start + gallery_size]
            texts = torch.isin(text_to_image, ids).nonzero().flatten()
            frame = _ranked_rows(image_feats[start:start + gallery_size], text_feats[texts], text_to_image[texts], ids,
                                 [caption_ids[i] for i in texts.tolist()], split)
            frames.append(frame.assign(gallery=gallery))
        items = pd.concat(frames, ignore_index=True)
    metrics = SPEC.aggregate(items)
    recalls = [metrics[f"{d}_r{k}"] for d in ("tr", "ir") for k in RECALL_CUTOFFS]
    metrics["average_score"] = sum(recalls) / len(recalls)
    num_images = float((items["direction"] == "i2t").sum())
    return EvalResult({**metrics, "num_images": num_images, "num_captions": float(len(items) - num_images)}, items)


def _ranked_rows(image_feats: torch.Tensor, text_feats: torch.Tensor, text_to_image: torch.Tensor,
                 image_ids: torch.Tensor, caption_ids: Sequence[int], split: str) -> pd.DataFrame:
    ranks = retrieval_ranks(image_feats, text_feats, text_to_image, image_ids, split=split)
    ids = ranks.image_ids.tolist()
    images = pd.DataFrame({
        "item_id": [f"i2t:{i}" for i in ids], "cluster_id": [str(i) for i in ids],
        "prediction": [str(i) for i in text_to_image[ranks.image_top1].tolist()], "direction": "i2t",
        "rank": (ranks.image_rank + 1).numpy(),
        **{f"tr_r{k}": 100.0 * (ranks.image_rank < k).double().numpy() for k in RECALL_CUTOFFS},
    })
    texts = pd.DataFrame({
        "item_id": [f"t2i:{c}" for c in caption_ids], "cluster_id": [str(i) for i in text_to_image.tolist()],
        "prediction": [str(ids[row]) for row in ranks.text_top1.tolist()], "direction": "t2i",
        "rank": (ranks.text_rank + 1).numpy(),
        **{f"ir_r{k}": 100.0 * (ranks.text_rank < k).double().numpy() for k in RECALL_CUTOFFS},
    })
    return pd.concat([images, texts], ignore_index=True)

def variant_recipes(variant: Mapping[str, Any]) -> dict[str, dict[str, Any]] | None:
    """The intermediate ITC stage's recipe (any size) for ``source="pretraining_pairs"``; Flickr30K's
    recipes for ``dataset="flickr30k"``; ``None`` (COCO's, :data:`SPEC` ``.recipes``) otherwise."""
    if variant.get("source") == "pretraining_pairs":
        return {"base": dict(ITC_RECIPE)}
    dataset = variant.get("dataset", "coco")
    if dataset == "coco":
        return None
    giant = PAPER_RECIPES.get(f"giant_{dataset}")
    table = {size: recipe(size, dataset) for size in ("base", "large")}
    return {**table, "giant": giant_recipe(table["base"], giant)} if giant else table


SPEC = TaskSpec(
    name="retrieval",
    build_model=build_retrieval,
    build_data=build_data,
    recipes={**RECIPES, "giant": giant_recipe(RECIPES["base"], PAPER_RECIPES["giant"])},
    data_defaults=DATA_DEFAULTS,
    eval_splits=("test",),
    metrics=(
        MetricSpec("tr_r1", primary=True, item_column="tr_r1"),
        MetricSpec("tr_r5", item_column="tr_r5"),
        MetricSpec("tr_r10", item_column="tr_r10"),
        MetricSpec("ir_r1", item_column="ir_r1"),
        MetricSpec("ir_r5", item_column="ir_r5"),
        MetricSpec("ir_r10", item_column="ir_r10"),
        MetricSpec("average_score"),
    ),
    build_eval=build_eval_dataset,
    evaluate=evaluate,
    training_step=training_step,
    variant_recipes=variant_recipes,
)
