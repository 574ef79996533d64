"""VQAv2: BEiT-3 as a fusion encoder with an answer classifier (paper Table 4; official
``BEiT3ForVisualQuestionAnswering``, ``VQAHandler``; recipe ``get_started_for_vqav2.md``).

The image and the question are encoded together (image tokens first) without the final encoder
LayerNorm (``normalize_output=False``); a pooler (LN -> dense -> tanh) over the image CLS feeds
Linear(D, 2D) -> LN -> GELU -> Linear(2D, 3129). Training minimises BCE-with-logits against the soft
answer scores, summed over answers (``mean * num_classes``). Validation logs :func:`vqa_score`; test-dev
answers go to EvalAI as :func:`vqa_submission`; with annotations, :func:`vqa_accuracy` is the official
scorer. Checked against unilm ``beit3/modeling_finetune.py`` and ``engine_for_finetuning.py`` (read,
not run) and the state-dict dump ``tests/assets/beit3-base-state-dict-keys.txt``.

``quirks`` (``"fixed"`` default, ``"official"``): passed to the VQAv2 reader (how the soft targets
count raw vs normalised answers) and to the choice of the validation transform (the official code
validates on training-augmented images); see :func:`build_dataset` and :func:`build_transform`.

Training and evaluation on the real file layout (or a benchmark world):
``build_data(data_config, model=, seed=, rank=, world_size=)`` gives the trainer's batches
(``image, question, padding_mask, labels, question_id``), :func:`training_step` the official loss, and
``evaluate(model, data_config, split="val" | "test-dev")`` the official accuracy or the EvalAI file.
``data_config`` keys (:data:`DATA_DEFAULTS`): ``root`` (official ``data_path`` holding ``train2014/``,
``val2014/``, ``test2015/`` and ``vqa/``, or a world directory), ``tokenizer`` (SentencePiece model),
``split`` (``train``, ``val``, or a list of both), ``questions`` / ``annotations`` (file templates with
``{subtype}``), ``image_root``, ``answer_vocab`` (``answer2label.txt``; default built from train + val
with ``answer_min_count``), ``batch_size`` (per rank), ``img_size`` (default the model's), ``max_len``,
``randaug``, ``quirks``, ``num_workers``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from backbones import BEiT3Backbone, read_state_dict
from tasks.data.vqa import build_answer_vocab, read_answer_vocab
from tasks.finetune_data import (
    ImagesFrom,
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
from tasks.heads import Pooler, TaskModel, check_quirks, create_task_backbone, init_head_weights, transform_is_train
from tasks.metrics.vqa_normalize import normalize_answer
from tasks.metrics.vqa import question_accuracy, question_scores, vqa_accuracy, vqa_score, vqa_submission
from tasks.spec import EvalResult, MetricSpec, TaskSpec, giant_recipe

__all__ = [
    "BEiT3ForVisualQuestionAnswering",
    "DATA_DEFAULTS",
    "NUM_ANSWERS",
    "PAPER_RECIPES",
    "RECIPES",
    "answer_vocab",
    "build_data",
    "build_dataset",
    "build_eval_dataset",
    "build_transform",
    "build_vqav2",
    "check_answer_vocab",
    "collate",
    "evaluate",
    "loss",
    "predictions_from_logits",
    "score_answers",
    "question_accuracy",
    "training_step",
    "vqa_accuracy",
    "vqa_score",
    "vqa_submission",
]

NUM_ANSWERS = 3129  # answers seen >= 9 times in train+val (ViLT / BEiT-3 vocabulary)

# Official recipes (beit3/get_started/get_started_for_vqav2.md); batch_size is the total batch.
RECIPES: dict[str, dict[str, Any]] = {
    "base": dict(
        model="beit3_base_patch16_480", init_checkpoint="beit3_base_patch16_224.pth", img_size=480,
        batch_size=128, lr=3e-5, min_lr=1e-6, layer_decay=1.0, head_lr_weight=20.0, epochs=10,
        warmup_epochs=1, drop_path=0.1, weight_decay=0.01, opt_betas=(0.9, 0.98), opt_eps=1e-8,
        clip_grad=None, randaug=True, max_text_len=64, num_classes=NUM_ANSWERS, grad_checkpointing=False,
        seed=42,
    ),
    "large": dict(
        model="beit3_large_patch16_480", init_checkpoint="beit3_large_patch16_224.pth", img_size=480,
        batch_size=128, lr=2e-5, min_lr=1e-6, layer_decay=1.0, head_lr_weight=20.0, epochs=10,
        warmup_epochs=1, drop_path=0.15, weight_decay=0.01, opt_betas=(0.9, 0.98), opt_eps=1e-8,
        clip_grad=None, randaug=True, max_text_len=64, num_classes=NUM_ANSWERS, grad_checkpointing=True,
        seed=42,
    ),
}
# Paper Table 12 (giant, OCR transcript): the resolution reads 756 (a multiple of patch 14); 768 is
# possible if the OCR misread it.
PAPER_RECIPES: dict[str, dict[str, Any]] = {
    "giant": dict(
        model="beit3_giant_patch14_224", img_size=756, batch_size=128, lr=1e-5, layer_decay=1.0, epochs=10,
        warmup_epochs=1, drop_path=0.4, weight_decay=0.01, opt_betas=(0.9, 0.999), opt_eps=1e-8,
        source="paper Table 12",
    ),
}


class BEiT3ForVisualQuestionAnswering(TaskModel):
    """The official VQA model: keys ``beit3.*``, ``pooler.{norm,dense}``, ``head.{0,1,3}``.

    Args:
        backbone: from ``backbones.create_model(..., normalize_output=False)`` (as the official).
        num_classes: answer vocabulary size (3129 for VQAv2).
        norm_layer: normalisation of the pooler and head.
    """

    head_patterns = ("pooler.*", "head.*")

    def __init__(
        self, backbone: BEiT3Backbone, num_classes: int = NUM_ANSWERS, norm_layer: type[nn.Module] = nn.LayerNorm
    ):
        super().__init__(backbone)
        dim = self.embed_dim
        self.num_classes = num_classes
        self.pooler = Pooler(dim, dim, norm_layer)
        self.pooler.apply(init_head_weights)
        self.head = nn.Sequential(
            nn.Linear(dim, dim * 2),
            norm_layer(dim * 2),
            nn.GELU(),
            nn.Linear(dim * 2, num_classes),
        )
        self.head.apply(init_head_weights)

    def forward(
        self,
        image: torch.Tensor,
        question: torch.Tensor,
        padding_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Answer logits (B, num_classes).

        Args:
            image: (B, 3, H, W).
            question: (B, L) token ids.
            padding_mask: (B, L), 1 on padding.
            labels: not used by the model (the official handler computes the loss outside, as
                :func:`loss` does); accepted so a batch dict can be passed as keyword arguments.
        """
        out = self.beit3(textual_tokens=question, visual_tokens=image, text_padding_position=padding_mask)
        return self.head(self.pooler(out["encoder_out"]))


def build_vqav2(model_name: str, num_classes: int = NUM_ANSWERS, **overrides: Any) -> BEiT3ForVisualQuestionAnswering:
    """``tasks.build_model("vqav2", "beit3_base_patch16_480", num_classes=3129, drop_path_rate=0.1)``.

    Backbone overrides go to ``backbones.create_model``; ``normalize_output`` defaults to False.
    """
    backbone = create_task_backbone(model_name, {"normalize_output": False}, overrides)
    return BEiT3ForVisualQuestionAnswering(backbone, num_classes=num_classes)


def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Official VQA loss: ``BCEWithLogits(mean) * num_classes`` in fp32 (a per-answer sum, batch-averaged)."""
    if logits.shape != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and soft labels {tuple(labels.shape)} must have the same shape")
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="mean") * labels.shape[1]


def predictions_from_logits(
    logits: torch.Tensor, question_ids: Sequence[int] | torch.Tensor, answer_vocab: Sequence[str]
) -> dict[int, str]:
    """``{question_id: answer}`` of the arg-max answers (as ``VQAHandler.eval_batch`` on test splits)."""
    if logits.dim() != 2 or logits.shape[1] != len(answer_vocab):
        raise ValueError(
            f"logits of shape {tuple(logits.shape)} do not fit an answer vocabulary of {len(answer_vocab)}"
        )
    ids = question_ids.tolist() if isinstance(question_ids, torch.Tensor) else list(question_ids)
    if len(ids) != logits.shape[0]:
        raise ValueError(f"{len(ids)} question ids for {logits.shape[0]} rows of logits")
    best = logits.argmax(dim=1).tolist()
    return {int(qid): answer_vocab[index] for qid, index in zip(ids, best)}


def _vocab_size(vocab: Sequence[str] | Mapping[str, int] | str | os.PathLike) -> int:
    if isinstance(vocab, (str, os.PathLike)):
        from tasks.data.vqa import read_answer_vocab

        return len(read_answer_vocab(vocab))
    if isinstance(vocab, Mapping):  # answer2label
        labels = sorted(vocab.values())
        if labels != list(range(len(labels))):
            raise ValueError(f"answer2label must map the {len(labels)} answers to labels 0..{len(labels) - 1} "
                             "without gaps or repeats")
        return len(labels)
    return len(vocab)


def check_answer_vocab(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike,
    vocab: Sequence[str] | Mapping[str, int] | str | os.PathLike,
) -> int:
    """Check that an answer vocabulary fits the VQA head of a model or checkpoint; return its size.

    Args:
        model_or_state_dict: a VQA model, a state dict (``{'model': ...}`` wrappers allowed) or a
            checkpoint path.
        vocab: the answer list in label order, an ``answer2label`` mapping, or an answer file.

    Raises:
        ValueError: the sizes differ (both named), or there is no VQA head.
    """
    if isinstance(model_or_state_dict, nn.Module):
        state = model_or_state_dict.state_dict()
    else:
        state = read_state_dict(model_or_state_dict)
    head_keys = [key for key in state if key == "head.3.weight" or key.endswith(".head.3.weight")]
    if not head_keys:
        raise ValueError("no VQA answer head (head.3.weight) in the given model/checkpoint: is it a VQAv2 model?")
    num_classes = int(state[head_keys[0]].shape[0])
    size = _vocab_size(vocab)
    if size != num_classes:
        raise ValueError(
            f"the answer vocabulary has {size} answers but the checkpoint's VQA head has {num_classes} classes. "
            f"Use the answer2label file the checkpoint was trained with, or fine-tune a new head: build the "
            f"model with num_classes={size} and load with load_checkpoint(..., drop=['head.*'])."
        )
    return size


def build_transform(split: str, img_size: int = 480, quirks: str = "fixed", randaug: bool = True,
                    augment: str = "official"):
    """The official VL image transform for ``split`` (``train``, ``val``, ``test``/``test-dev``).

    ``quirks="official"`` gives the validation split the training augmentation, as the official loader.
    """
    from tasks.data.transforms import build_vl_transform

    return build_vl_transform(is_train=transform_is_train(split, quirks), img_size=img_size, randaug=randaug,
                              augment=augment)


def build_dataset(
    questions_json: str | os.PathLike,
    image_root: str | os.PathLike,
    split: str,
    annotations_json: str | os.PathLike | None = None,
    answer_vocab: Sequence[str] | None = None,
    tokenizer: Any = None,
    img_size: int = 480,
    randaug: bool = True,
    quirks: str = "fixed",
    augment: str = "official",
    **reader_kwargs: Any,
):
    """A :class:`tasks.data.vqa.VQAv2` reader with the split's transform; ``quirks`` goes to both.

    Args:
        split: ``train``, ``val`` or ``test`` -- picks the transform (see :func:`build_transform`).
        reader_kwargs: further ``VQAv2`` arguments (``image_ids``, ``check_images``, ``skip_bad``, ...).
    """
    from tasks.data.vqa import VQAv2

    check_quirks(quirks)
    return VQAv2(
        questions_json,
        image_root,
        annotations_json=annotations_json,
        answer_vocab=answer_vocab,
        tokenizer=tokenizer,
        transform=build_transform(split, img_size, quirks, randaug, augment),
        quirks=quirks,
        **reader_kwargs,
    )


# --------------------------------------------------------------------------- training and evaluation
# Data config of build_data / evaluate. Files are relative to the data root (the official data_path:
# train2014/, val2014/, test2015/ and vqa/ with the question and annotation files); in a benchmark world
# (root holding world.json) the data root is the world's "vqav2" folder and the tokenizer its spm model.
DATA_DEFAULTS: dict[str, Any] = {
    "root": None,  # data root, or a benchmark-world directory
    "tokenizer": None,  # SentencePiece .model (beit3.spm), relative to root; default: the world's
    "split": "train",  # train | val | test-dev | test, or a list (official test-dev model: ["train", "val"])
    "questions": "vqa/v2_OpenEnded_mscoco_{subtype}_questions.json",
    "annotations": "vqa/v2_mscoco_{subtype}_annotations.json",
    "image_root": "",  # folder of train2014/ val2014/ test2015/, relative to the data root
    "answer_vocab": None,  # answer2label.txt; default: built from train+val annotations (answer_min_count)
    "answer_min_count": 9,  # official: answers seen >= 9 times (3129 on the real files)
    "batch_size": 16,  # per rank (the recipes' batch_size is the total)
    "img_size": None,  # default: the model's input size
    "max_len": 64,
    "randaug": True,
    "augment": "official",  # official | label_safe (synthetic profiles; tasks.data.transforms)
    "quirks": "fixed",
    "num_workers": 0,
    "skip_bad": False,  # skip (and count, data.num_skipped) malformed records instead of raising
    "shuffle_images": None,  # control: a seed permutes the split's images among its items (texts kept)
}
SPLIT_SUBTYPES = {"train": "train2014", "val": "val2014", "test-dev": "test-dev2015", "test": "test2015"}
ANNOTATED_SPLITS = ("train", "val")


def _subtype(split: str) -> str:
    if split not in SPLIT_SUBTYPES:
        raise ValueError(f"unknown VQAv2 split {split!r}; choose one of {', '.join(SPLIT_SUBTYPES)}")
    return SPLIT_SUBTYPES[split]


def _questions_path(cfg: Mapping[str, Any], root, split: str):
    return root.file(cfg["questions"].format(subtype=_subtype(split)))


def answer_vocab(data_config: Mapping[str, Any]) -> list[str]:
    """The answer vocabulary of a data config: ``answer_vocab`` (an ``answer2label.txt``), else the
    official one built from the train and val annotations (answers seen ``answer_min_count`` times)."""
    cfg = merge_config(data_config, DATA_DEFAULTS, "vqav2")
    root = resolve_root(cfg, "vqav2")
    if cfg["answer_vocab"] is not None:
        return read_answer_vocab(root.file(cfg["answer_vocab"]))
    files = [root.file(cfg["annotations"].format(subtype=_subtype(s))) for s in ANNOTATED_SPLITS]
    return build_answer_vocab(files, min_count=cfg["answer_min_count"])


def collate(
    items: Sequence[Mapping[str, Any]], generator: torch.Generator | None = None, *, tokenizer: Any, max_len: int
) -> dict[str, torch.Tensor]:
    """Batch of ``VQAv2`` items: ``image, question`` (ids), ``padding_mask, question_id`` and, with
    targets, ``labels`` (the soft scores); the official handler's inputs under the model's names."""
    encoded = tokenizer([item["question"] for item in items], max_len=max_len)
    batch = {"image": stack(items, "image"), "question": encoded["text_ids"], "padding_mask": encoded["padding_mask"],
             "question_id": stack(items, "question_id")}
    if all("target" in item for item in items):
        batch["labels"] = stack(items, "target")
    return batch


def _dataset(cfg: Mapping[str, Any], root, split: str, vocab: Sequence[str], *, drop_unlabeled: bool, transform_split: str):
    annotations = root.file(cfg["annotations"].format(subtype=_subtype(split))) if split in ANNOTATED_SPLITS else None
    return build_dataset(
        _questions_path(cfg, root, split), root.file(cfg["image_root"]), transform_split, annotations_json=annotations,
        answer_vocab=vocab, img_size=cfg["img_size"], randaug=cfg["randaug"], quirks=cfg["quirks"], augment=cfg["augment"],
        drop_unlabeled=drop_unlabeled, skip_bad=cfg["skip_bad"],
    )


def _prepare(data_config: Mapping[str, Any], model: nn.Module):
    cfg = merge_config(data_config, DATA_DEFAULTS, "vqav2")
    check_quirks(cfg["quirks"])
    root = resolve_root(cfg, "vqav2")
    tokenizer = load_text_tokenizer(cfg["tokenizer"], root)
    check_text_fits(model, tokenizer, cfg["max_len"])
    vocab = answer_vocab(cfg)
    check_answer_vocab(model, vocab)
    cfg["img_size"] = model_img_size(model, cfg["img_size"])
    return cfg, root, tokenizer, vocab


def build_data(data_config: dict, *, model: nn.Module, seed: int, rank: int = 0, world_size: int = 1):
    """Training batches (:class:`tasks.finetune_data.FinetuneData`) of ``data_config`` (keys:
    :data:`DATA_DEFAULTS`): questions without an answer in the vocabulary are dropped (official).

    Raises:
        ValueError: the answer vocabulary does not fit the model's head, the text does not fit the model.
    """
    from torch.utils.data import ConcatDataset

    cfg, root, tokenizer, vocab = _prepare(data_config, model)
    splits = [cfg["split"]] if isinstance(cfg["split"], str) else list(cfg["split"])
    unannotated = [s for s in splits if s not in ANNOTATED_SPLITS]
    if unannotated:
        raise ValueError(f"VQAv2 split(s) {unannotated} have no annotations to train on; train on "
                         f"{' and/or '.join(ANNOTATED_SPLITS)}")
    readers = [_dataset(cfg, root, s, vocab, drop_unlabeled=True, transform_split="train") for s in splits]
    source = readers[0] if len(readers) == 1 else ConcatDataset(readers)
    return FinetuneData(
        source, partial(collate, tokenizer=tokenizer, max_len=cfg["max_len"]), batch_size=cfg["batch_size"],
        seed=seed, rank=rank, world_size=world_size, num_workers=cfg["num_workers"], name=f"VQAv2 {'+'.join(splits)}",
    )


def training_step(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``VQAHandler.train_batch``: BCE x classes on the soft targets; logs the batch's VQA score."""
    logits = model(image=batch["image"], question=batch["question"], padding_mask=batch["padding_mask"])
    labels = batch["labels"]
    with torch.no_grad():
        score = 100.0 * labels.float().gather(1, logits.argmax(dim=1, keepdim=True)).mean()
    return {"loss": loss(logits, labels), "vqa_score": score}


def build_eval_dataset(data_config: Mapping[str, Any], split: str, *, model: nn.Module):
    """The reader :func:`evaluate` scores: every question of ``split`` (none dropped), the split's transform."""
    cfg, root, _, vocab = _prepare(data_config, model)
    return _dataset(cfg, root, split, vocab, drop_unlabeled=False, transform_split=split)


def evaluate(
    model: nn.Module,
    data_config: Mapping[str, Any],
    *,
    split: str = "val",
    limit: int | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    out_path: str | os.PathLike | None = None,
) -> EvalResult:
    """Answer every question of ``split`` (the first ``limit`` with a limit; arg-max over the answer
    vocabulary) and score it (:func:`score_answers`).

    ``val``: the official accuracy (against the annotations) as ``vqa_accuracy`` and
    ``vqa_accuracy_<answer type>``, plus the training-time ``vqa_score``, and per question.
    ``test-dev``/``test``: no annotations; the EvalAI file (:func:`vqa_submission`) is the result.
    With ``out_path`` the submission JSON is written for any split.

    Raises:
        EmptySplitError: the split has no questions. ValueError: the vocabulary does not fit the head.
        DataError: a question without annotation (named) and other bad records.
    """
    cfg, root, tokenizer, vocab = _prepare(data_config, model)
    with open(_questions_path(cfg, root, split), encoding="utf-8") as f:
        check_not_empty(len(json.load(f).get("questions") or []), split, "VQA questions")
    dataset = _dataset(cfg, root, split, vocab, drop_unlabeled=False, transform_split=split)
    if cfg["shuffle_images"] is not None:
        dataset = ImagesFrom(dataset, shuffled_image_sources([ex.image_id for ex in dataset.examples],
                                                             cfg["shuffle_images"]))
    indices = first_items(len(dataset), limit)
    batches = eval_batches(dataset, partial(collate, tokenizer=tokenizer, max_len=cfg["max_len"]), batch_size,
                           indices=indices)
    predictions: dict[int, str] = {}
    target_scores: dict[int, float] = {}
    with eval_mode(model):
        for batch in batches:
            batch = to_device(batch, device)
            logits = model(image=batch["image"], question=batch["question"], padding_mask=batch["padding_mask"])
            logits = logits.float().cpu()
            predictions.update(predictions_from_logits(logits, batch["question_id"].cpu(), vocab))
            if "labels" in batch:
                best = batch["labels"].float().cpu().gather(1, logits.argmax(dim=1, keepdim=True)).squeeze(1)
                target_scores.update(zip(batch["question_id"].cpu().tolist(), best.tolist()))
    examples = [dataset.examples[i] for i in indices]
    rows = vqa_submission(predictions, [ex.question_id for ex in examples], split=split)
    if out_path is not None:
        with open(out_path, "w", encoding="utf-8") as f:
            json.dump(rows, f)
    image_ids = {ex.question_id: ex.image_id for ex in examples}
    annotations = dataset.gt_answers() if split in ANNOTATED_SPLITS else None
    return score_answers(predictions, image_ids, annotations, target_scores, split=split)


MIN_PRIOR_QUESTIONS = 5  # train questions with the same text before their prior replaces the question type's


def _blind_key(question: str) -> str:
    return " ".join(question.lower().replace("?", " ").split())


def text_only_baseline(data_config: Mapping[str, Any], *, split: str = "val") -> EvalResult:
    """The question-only prior, the strongest blind baseline fitted here: each question of ``split``
    gets the answer with the highest summed VQA accuracy on train (``min(annotators / 3, 1)``) among
    questions with the same text (case and "?" ignored; at least :data:`MIN_PRIOR_QUESTIONS` of them),
    else the same question type (the annotation's ``question_type``, its first words), else all;
    scored as :func:`evaluate` scores (official per-question accuracy)."""
    from collections import Counter, defaultdict

    cfg = merge_config(data_config, DATA_DEFAULTS, "vqav2")
    root = resolve_root(cfg, "vqav2")

    def read(which: str) -> tuple[list[dict], dict[int, dict]]:
        with open(_questions_path(cfg, root, which), encoding="utf-8") as f:
            questions = json.load(f)["questions"]
        with open(root.file(cfg["annotations"].format(subtype=_subtype(which))), encoding="utf-8") as f:
            annotations = {a["question_id"]: a for a in json.load(f)["annotations"]}
        return questions, annotations

    questions, annotations = read("train")
    by_text, by_type, overall = defaultdict(Counter), defaultdict(Counter), Counter()
    asked = Counter()
    for q in questions:
        annotation = annotations[q["question_id"]]
        given = Counter(normalize_answer(a["answer"]) for a in annotation["answers"])
        credit = Counter({answer: min(n / 3, 1.0) for answer, n in given.items()})
        key = _blind_key(q["question"])
        asked[key] += 1
        by_text[key] += credit
        by_type[annotation.get("question_type", "")] += credit
        overall += credit
    questions, annotations = read(split)
    check_not_empty(len(questions), split, "VQA questions")
    predictions = {}
    for q in questions:
        key = _blind_key(q["question"])
        prior = (by_text[key] if asked[key] >= MIN_PRIOR_QUESTIONS else None) or \
            by_type.get(annotations[q["question_id"]].get("question_type", "")) or overall
        predictions[q["question_id"]] = prior.most_common(1)[0][0]
    image_ids = {q["question_id"]: q["image_id"] for q in questions}
    return score_answers(predictions, image_ids, {q: annotations[q] for q in predictions}, split=split)


def score_answers(
    predictions: Mapping[int, str],
    image_ids: Mapping[int, int],
    annotations: Mapping[int, Mapping] | None,
    target_scores: Mapping[int, float] | None = None,
    *,
    split: str = "val",
) -> EvalResult:
    """The evaluation of answered questions: one row per question (``item_id`` its id, ``cluster_id``
    its image), scored with the official per-question accuracy (:func:`question_scores`) and, with the
    reader's soft targets of the predicted answers (``target_scores``), the training-time ``vqa_score``.

    ``annotations`` ``None`` (test splits): the frame holds the answers and ``num_questions`` only.
    The aggregates are the frame's means: ``vqa_accuracy`` rounded as the official scorer rounds.
    """
    items = pd.DataFrame({"item_id": [str(q) for q in predictions],
                          "cluster_id": [str(image_ids[q]) for q in predictions],
                          "prediction": list(predictions.values())})
    if annotations is None:
        return EvalResult({"num_questions": float(len(items))}, items)
    scores = question_scores(predictions, annotations, split=split, partial=True)  # a limit scores the first items
    items["answer_type"] = scores["answer_type"].to_numpy()
    items["vqa_accuracy"] = scores["accuracy"].to_numpy()
    if target_scores is not None:
        items["vqa_score"] = [100.0 * target_scores[q] for q in predictions]
    metrics = SPEC.aggregate(items)
    ndigits = SPEC.metric("vqa_accuracy").ndigits
    for kind, group in items.dropna(subset=["answer_type"]).groupby("answer_type", sort=False):
        metrics[f"vqa_accuracy_{kind}"] = round(float(group["vqa_accuracy"].mean()), ndigits)
    metrics["num_questions"] = float(len(items))
    return EvalResult(metrics, items)

def head_overrides(data_config: Mapping[str, Any], *, model_overrides: Mapping[str, Any], synthetic: bool,
                   official: Mapping[str, Any]) -> dict[str, Any]:
    """The answer head: a world's vocabulary size; on real data the official 3129 answers (the reader
    checks the vocabulary against the head at launch)."""
    return {"num_classes": len(answer_vocab(data_config)) if synthetic else int(official["num_classes"])}


SPEC = TaskSpec(
    name="vqav2",
    build_model=build_vqav2,
    build_data=build_data,
    recipes={**RECIPES, "giant": giant_recipe(RECIPES["base"], PAPER_RECIPES["giant"])},
    data_defaults=DATA_DEFAULTS,
    eval_splits=("val",),
    metrics=(
        MetricSpec("vqa_accuracy", primary=True, item_column="vqa_accuracy", ndigits=2),
        MetricSpec("vqa_accuracy_yes/no", ndigits=2),
        MetricSpec("vqa_accuracy_number", ndigits=2),
        MetricSpec("vqa_accuracy_other", ndigits=2),
        MetricSpec("vqa_score", item_column="vqa_score"),
    ),
    build_eval=build_eval_dataset,
    evaluate=evaluate,
    training_step=training_step,
    head_overrides=head_overrides,
    text_baseline=text_only_baseline,
)
