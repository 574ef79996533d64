"""NLVR2: does a sentence hold for a pair of images? (paper Table 4; official
``BEiT3ForVisualReasoning``, ``NLVR2Handler``; recipe ``get_started_for_nlvr2.md``).

Each (image, sentence) pair is encoded by the fusion encoder (with the final LayerNorm); the image CLS
and the text BOS of both pairs, ``[v_a; l_a; v_b; l_b]`` (4D), go through LN -> Linear(4D, 2D) -> LN ->
GELU -> Linear(2D, 2), whose two Linears are scaled by 0.001 at init. Cross-entropy loss, accuracy
metric (dev for model selection, test-P reported). Checked against unilm ``modeling_finetune.py`` and
``engine_for_finetuning.py`` (read, not run) and the state-dict dump.

Training and evaluation on the real file layout (or a benchmark world):
``build_data(data_config, model=, seed=, rank=, world_size=)`` gives the trainer's batches (the
official keys ``image, image2, language_tokens, padding_mask, label``), :func:`training_step` the
cross-entropy, ``evaluate(model, data_config, split="dev" | "test1")`` the accuracy. ``data_config``
keys (:data:`DATA_DEFAULTS`): ``root`` (official ``data_path`` with ``images/train/``, ``dev/``,
``test1/``, or a world directory), ``nlvr_repo`` (official ``nlvr_repo_path``, a lil-lab/nlvr checkout;
default ``root``, in a world the world directory), ``data_file`` (``nlvr2/data/{split}.json`` under
``nlvr_repo``), ``tokenizer``, ``split``, ``batch_size`` (per rank), ``img_size`` (default the model's),
``max_len``, ``randaug`` (off in the recipes), ``quirks``, ``num_workers``.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from backbones import BEiT3Backbone
from tasks.finetune_data import (
    ImagesFrom,
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
    shuffled_image_sources,
    stack,
    to_device,
)
from tasks.heads import TaskModel, TwoLayerMLP, create_task_backbone, init_head_weights, scale_head_, transform_is_train
from tasks.metrics.classification import accuracy
from tasks.spec import EvalResult, MetricSpec, TaskSpec, giant_recipe

__all__ = [
    "BEiT3ForVisualReasoning",
    "DATA_DEFAULTS",
    "PAPER_RECIPES",
    "RECIPES",
    "accuracy",
    "build_data",
    "build_eval_dataset",
    "build_nlvr2",
    "build_transform",
    "collate",
    "evaluate",
    "loss",
    "score_examples",
    "sentence_set",
    "training_step",
]

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


def build_nlvr2(model_name: str, num_classes: int = 2, **overrides: Any) -> BEiT3ForVisualReasoning:
    """``tasks.build_model("nlvr2", "beit3_base_patch16_224", drop_path_rate=0.2)``."""
    backbone = create_task_backbone(model_name, {}, overrides)
    return BEiT3ForVisualReasoning(backbone, num_classes=num_classes)


def loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Official NLVR2 loss: cross-entropy."""
    return F.cross_entropy(logits, label)


def build_transform(split: str, img_size: int = 224, quirks: str = "fixed", randaug: bool = False,
                    augment: str = "official"):
    """The official VL image transform for ``split`` (``train``, ``dev``/``val``, ``test1``/``test``).

    ``quirks="official"`` gives the dev split the training augmentation, as the official loader.
    """
    from tasks.data.transforms import build_vl_transform

    return build_vl_transform(is_train=transform_is_train(split, quirks), img_size=img_size, randaug=randaug,
                              augment=augment)


# --------------------------------------------------------------------------- training and evaluation
DATA_DEFAULTS: dict[str, Any] = {
    "root": None,  # official data_path (images/train/, dev/, test1/), or a benchmark-world directory
    "nlvr_repo": None,  # official nlvr_repo_path, relative to root; default root (a world: its repo entry)
    "data_file": "nlvr2/data/{split}.json",  # relative to nlvr_repo
    "tokenizer": None,  # SentencePiece .model, relative to root; default: the world's
    "split": "train",  # train | dev | test1
    "batch_size": 16,  # per rank (the recipes' batch_size is the total)
    "img_size": None,  # default: the model's input size
    "max_len": 64,
    "randaug": False,
    "augment": "official",  # official | label_safe (synthetic profiles; tasks.data.transforms)
    "quirks": "fixed",
    "num_workers": 0,
    "skip_bad": False,  # skip (and count, data.num_skipped) malformed records instead of raising
    "shuffle_images": None,  # control: a seed permutes the split's images among its items (texts kept)
}
SPLITS = ("train", "dev", "test1")


def _data_file(cfg: Mapping[str, Any], root: DataRoot, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"unknown NLVR2 split {split!r}; choose one of {', '.join(SPLITS)}")
    repo = cfg["nlvr_repo"]
    if repo is None:
        entry = root.world_entry("nlvr2")
        repo = entry.get("repo", ".") if entry is not None else "."
    return root.base / repo / cfg["data_file"].format(split=split)  # absolute parts stay as they are


def collate(
    items: Sequence[Mapping[str, Any]], generator: torch.Generator | None = None, *, tokenizer: Any, max_len: int
) -> dict[str, torch.Tensor]:
    """Batch of ``NLVR2`` items with the official keys ``image, image2, language_tokens, padding_mask, label``."""
    encoded = tokenizer([item["text"] for item in items], max_len=max_len)
    return {"image": stack(items, "image"), "image2": stack(items, "image2"), "language_tokens": encoded["text_ids"],
            "padding_mask": encoded["padding_mask"], "label": stack(items, "label")}


def _prepare(data_config: Mapping[str, Any], model: nn.Module):
    cfg = merge_config(data_config, DATA_DEFAULTS, "nlvr2")
    root = resolve_root(cfg, "nlvr2")
    tokenizer = load_text_tokenizer(cfg["tokenizer"], root)
    check_text_fits(model, tokenizer, cfg["max_len"])
    cfg["img_size"] = model_img_size(model, cfg["img_size"])
    return cfg, root, tokenizer


def _dataset(cfg: Mapping[str, Any], root: DataRoot, split: str, transform_split: str):
    from tasks.data.nlvr2 import NLVR2

    transform = build_transform(transform_split, cfg["img_size"], cfg["quirks"], cfg["randaug"], cfg["augment"])
    return NLVR2(_data_file(cfg, root, split), root.data, split, transform=transform, skip_bad=cfg["skip_bad"])


def build_data(data_config: dict, *, model: nn.Module, seed: int, rank: int = 0, world_size: int = 1) -> FinetuneData:
    """Training batches (:class:`tasks.finetune_data.FinetuneData`) of ``data_config`` (:data:`DATA_DEFAULTS`)."""
    cfg, root, tokenizer = _prepare(data_config, model)
    return FinetuneData(
        _dataset(cfg, root, cfg["split"], "train"), partial(collate, tokenizer=tokenizer, max_len=cfg["max_len"]),
        batch_size=cfg["batch_size"], seed=seed, rank=rank, world_size=world_size, num_workers=cfg["num_workers"],
        name=f"NLVR2 {cfg['split']}",
    )


def _logits(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return model(image_a=batch["image"], image_b=batch["image2"], text_description=batch["language_tokens"],
                 padding_mask=batch["padding_mask"])


def training_step(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``NLVR2Handler.train_batch``: cross-entropy; logs the batch accuracy (percent)."""
    logits = _logits(model, batch)
    with torch.no_grad():
        acc = 100.0 * (logits.argmax(dim=-1) == batch["label"]).float().mean()
    return {"loss": loss(logits, batch["label"]), "acc": acc}


def build_eval_dataset(data_config: Mapping[str, Any], split: str, *, model: nn.Module):
    """The reader :func:`evaluate` scores, with the split's transform (``quirks``)."""
    cfg, root, _ = _prepare(data_config, model)
    return _dataset(cfg, root, split, split)


def evaluate(
    model: nn.Module,
    data_config: Mapping[str, Any],
    *,
    split: str = "dev",
    limit: int | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
) -> EvalResult:
    """Accuracy (percent) on ``split`` (``dev`` picks the checkpoint, ``test1`` is test-P), on its first
    ``limit`` examples with a limit; per example in :func:`score_examples`'s frame.

    Raises:
        EmptySplitError: the split's file has no examples.
    """
    cfg, root, tokenizer = _prepare(data_config, model)
    path = _data_file(cfg, root, split)
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            check_not_empty(sum(1 for line in f if line.strip()), split, "NLVR2 examples")
    dataset = _dataset(cfg, root, split, split)
    if cfg["shuffle_images"] is not None:
        pairs = [(ex["image_path"], ex["image2_path"]) for ex in dataset.examples]
        dataset = ImagesFrom(dataset, shuffled_image_sources(pairs, cfg["shuffle_images"]))
    indices = first_items(len(dataset), limit)
    logits, labels = [], []
    with eval_mode(model):
        for batch in eval_batches(dataset, partial(collate, tokenizer=tokenizer, max_len=cfg["max_len"]), batch_size,
                                  indices=indices):
            logits.append(_logits(model, to_device(batch, device)).float().cpu())
            labels.append(batch["label"])
    examples = [dataset.examples[i] for i in indices]
    return score_examples(torch.cat(logits), torch.cat(labels), [ex["identifier"] for ex in examples],
                          sentences=[ex["text"] for ex in examples], split=split)


def text_only_baseline(data_config: Mapping[str, Any], *, split: str = "dev") -> EvalResult:
    """The sentence-only prior: each example of ``split`` labelled as train most often labels the same
    sentence (case ignored), else as train's majority label; scored as :func:`evaluate` scores."""
    from collections import Counter, defaultdict

    cfg = merge_config(data_config, DATA_DEFAULTS, "nlvr2")
    root = resolve_root(cfg, "nlvr2")

    def read(which: str) -> list[dict]:
        with open(_data_file(cfg, root, which), encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    by_sentence, overall = defaultdict(Counter), Counter()
    for rec in read("train"):
        by_sentence[rec["sentence"].lower().strip()][rec["label"]] += 1
        overall[rec["label"]] += 1
    examples = read(split)
    check_not_empty(len(examples), split, "NLVR2 examples")
    predicted = [(by_sentence.get(rec["sentence"].lower().strip()) or overall).most_common(1)[0][0] for rec in examples]
    logits = F.one_hot(torch.tensor([int(p == "True") for p in predicted]), 2).float()
    labels = torch.tensor([int(rec["label"] == "True") for rec in examples])
    return score_examples(logits, labels, [rec["identifier"] for rec in examples],
                          sentences=[rec["sentence"] for rec in examples], split=split)


def sentence_set(identifier: str) -> str:
    """The set an example belongs to (``dev-850-2-0`` -> ``dev-850``): its sentences were written for
    the set's images, so its examples share images and sentences."""
    return "-".join(identifier.split("-")[:2])


def score_examples(logits: torch.Tensor, labels: torch.Tensor, identifiers: Sequence[str], *,
                   sentences: Sequence[str] | None = None, split: str = "dev") -> EvalResult:
    """One row per example (``item_id`` its identifier, ``cluster_id`` its :func:`sentence_set`), the
    predicted label, ``accuracy`` (100 if correct, else 0), whose mean is the split's accuracy, and
    ``pairwise``: on each True example, the share (percent) of the False examples of the same set and
    sentence that it outscores (margin ``logit[True] - logit[False]``; a tie counts half), empty on
    the others -- its mean is the threshold-free pairwise accuracy (which pair of a sentence is the
    true one). Without ``sentences`` the examples of a set are taken to share one sentence."""
    check_not_empty(logits.shape[0], split, "examples")
    if len(identifiers) != logits.shape[0]:
        raise ValueError(f"{len(identifiers)} identifiers for {logits.shape[0]} rows of logits")
    if sentences is not None and len(sentences) != len(identifiers):
        raise ValueError(f"{len(sentences)} sentences for {len(identifiers)} identifiers")
    predicted = logits.argmax(dim=1)
    items = pd.DataFrame({"item_id": list(identifiers), "cluster_id": [sentence_set(i) for i in identifiers],
                          "prediction": predicted.tolist(), "label": labels.tolist(),
                          "accuracy": 100.0 * (predicted == labels).double().numpy()})
    items["pairwise"] = _pairwise(items, (logits[:, 1] - logits[:, 0]).double().numpy(),
                                  sentences if sentences is not None else [""] * len(items))
    return EvalResult({**SPEC.aggregate(items), "num_examples": float(len(items))}, items)


def _pairwise(items: pd.DataFrame, margins, sentences: Sequence[str]) -> pd.Series:
    frame = pd.DataFrame({"group": items["cluster_id"] + "\t" + pd.Series(list(sentences)).str.lower().str.strip(),
                          "label": items["label"], "margin": margins})
    out = pd.Series(float("nan"), index=items.index)
    for _, group in frame.groupby("group"):
        true, false = group[group["label"] == 1], group[group["label"] == 0]
        if true.empty or false.empty:
            continue
        wins = (true["margin"].to_numpy()[:, None] > false["margin"].to_numpy()[None, :]).mean(axis=1)
        ties = (true["margin"].to_numpy()[:, None] == false["margin"].to_numpy()[None, :]).mean(axis=1)
        out[true.index] = 100.0 * (wins + 0.5 * ties)
    return out

SPEC = TaskSpec(
    name="nlvr2",
    build_model=build_nlvr2,
    build_data=build_data,
    recipes={**RECIPES, "giant": giant_recipe(RECIPES["base"], PAPER_RECIPES["giant"])},
    data_defaults=DATA_DEFAULTS,
    eval_splits=("dev", "test1"),
    metrics=(MetricSpec("accuracy", primary=True, item_column="accuracy"),
             MetricSpec("pairwise_accuracy", item_column="pairwise")),
    build_eval=build_eval_dataset,
    evaluate=evaluate,
    training_step=training_step,
    text_baseline=text_only_baseline,
)
