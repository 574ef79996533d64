"""VQAv2: questions + annotations JSON files, the answer vocabulary and soft-score targets.

File schemas (``v2_OpenEnded_mscoco_{subtype}_questions.json`` / ``v2_mscoco_{subtype}_annotations.json``)::

    {"data_subtype": "train2014", ..., "questions": [{"image_id": 458752, "question": "...", "question_id": 458752000}]}
    {"data_subtype": "train2014", ..., "annotations": [{"question_id": 458752000, "image_id": 458752,
        "question_type": "what is this", "answer_type": "other", "multiple_choice_answer": "net",
        "answers": [{"answer": "net", "answer_confidence": "maybe", "answer_id": 1}, ... 10 answers]}]}

Images are ``{subdir}/COCO_{subdir}_{image_id:012d}.jpg`` with ``subdir`` = ``train2014``, ``val2014`` or
``test2015`` (test-dev questions use the test2015 images). test-dev/test have no annotations.

Official behaviour (``beit3/datasets.py::VQAv2Dataset.make_dataset_index``, following ViLT):

* vocabulary: the official VQA normalisation of every ``multiple_choice_answer`` of train + val,
  answers seen >= 9 times, in first-seen order (3129 answers on the real files);
* targets: per question, the count of each of the 10 answers mapped to a soft score
  (0, 0.3, 0.6, 0.9, 1.0 for 0, 1, 2, 3, >=4) for the answers in the vocabulary. The official code
  counts the *raw* answer strings and looks them up in the *normalised* vocabulary, so e.g. "Yes"
  or "2 " never match: ``quirks="official"`` reproduces that, ``quirks="fixed"`` (default) counts
  normalised answers;
* questions with no answer in the vocabulary are dropped (train and val);
* the 1000-image ``rest_val`` split is drawn with an *unseeded* ``random.shuffle``; here
  :func:`rest_val_split` draws it from a seeded generator, so the split differs from the official
  one (which was never published) but is reproducible.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tasks.data.images import DataError, load_image
from tasks.metrics.vqa_normalize import normalize_answer

__all__ = [
    "QUIRKS",
    "VQAExample",
    "VQAv2",
    "answer_score",
    "build_answer_vocab",
    "read_answer_vocab",
    "rest_val_split",
    "vqa_image_path",
    "write_answer_vocab",
]

QUIRKS = ("fixed", "official")
_SUBDIR_OF_SUBTYPE = {"train2014": "train2014", "val2014": "val2014", "test2015": "test2015",
                      "test-dev2015": "test2015"}
_SUBTYPE_IN_NAME = re.compile(r"(train2014|val2014|test-dev2015|test2015)")
# A few thousand distinct strings among millions of answers: normalise each once.
_normalize = functools.lru_cache(maxsize=1 << 16)(normalize_answer)


def _load_json(path: str, key: str) -> tuple[dict, list]:
    if not os.path.isfile(path):
        raise DataError(f"VQA file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exn:
        raise DataError(f"{path} is not valid JSON: {exn}") from exn
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(f"{path} has no {key!r} list")
    return data, data[key]


def answer_score(count: int) -> float:
    """Soft score of an answer given by ``count`` of the 10 annotators (official VQA accuracy)."""
    return (0.0, 0.3, 0.6, 0.9)[count] if count < 4 else 1.0


def build_answer_vocab(annotation_files: Iterable[str | os.PathLike], min_count: int = 9) -> list[str]:
    """Answer vocabulary: normalised ``multiple_choice_answer`` seen at least ``min_count`` times.

    Args:
        annotation_files: annotation JSON files, in order (official: train then val).
        min_count: minimum count (official 9, which gives 3129 answers on train2014 + val2014).

    Returns:
        Answers in first-seen order (the official label order, which fixes the classifier rows).
    """
    counts: Counter = Counter()
    for file in annotation_files:
        path = os.fspath(file)
        _, annotations = _load_json(path, "annotations")
        for index, ann in enumerate(annotations):
            if not isinstance(ann, dict) or not isinstance(ann.get("multiple_choice_answer"), str):
                raise DataError(f"{path}: annotations[{index}] has no string 'multiple_choice_answer'")
            counts[_normalize(ann["multiple_choice_answer"])] += 1
    vocab = [answer for answer, n in counts.items() if n >= min_count]
    if not vocab:
        raise DataError(f"no answer occurs {min_count} times in {[os.fspath(f) for f in annotation_files]}")
    return vocab


def write_answer_vocab(vocab: Sequence[str], path: str | os.PathLike) -> None:
    """Write ``answer2label.txt`` in the official format (one ``{"answer", "label"}`` JSON per line)."""
    with open(path, "w", encoding="utf-8") as f:
        for label, answer in enumerate(vocab):
            f.write(json.dumps({"answer": answer, "label": label}) + "\n")


def read_answer_vocab(path: str | os.PathLike) -> list[str]:
    """Read an official ``answer2label.txt``; labels must be 0, 1, 2, ... in order."""
    path = os.fspath(path)
    vocab = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                answer, label = row["answer"], int(row["label"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exn:
                raise DataError(f"{path}:{line_no}: not an {{'answer', 'label'}} row: {exn}") from exn
            if label != len(vocab):
                raise DataError(f"{path}:{line_no}: label {label} out of order (expected {len(vocab)})")
            vocab.append(answer)
    return vocab


def rest_val_split(image_ids: Iterable[int], num_rest: int = 1000, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split val images into (trainable_val, rest_val) image ids, ``num_rest`` images in rest_val.

    Pass the image ids of the *labelled* val questions (official: the split is drawn after dropping
    questions without a label), e.g. ``rest_val_split(ex.image_id for ex in val.examples)``, then
    build the two readers with ``image_ids=``. The official code shuffles with an unseeded
    ``random.shuffle`` (ViLT convention); this draws a permutation of the sorted unique ids from
    ``numpy.random.default_rng(seed)``, so it is reproducible but not the official (unpublished) split.
    """
    unique = sorted(set(image_ids))
    order = np.random.default_rng(seed).permutation(len(unique))
    shuffled = [unique[i] for i in order]
    return sorted(shuffled[num_rest:]), sorted(shuffled[:num_rest])


def vqa_image_path(subdir: str, image_id: int) -> str:
    """``train2014/COCO_train2014_000000458752.jpg`` style path, relative to the image root."""
    return f"{subdir}/COCO_{subdir}_{image_id:012d}.jpg"


@dataclass
class VQAExample:
    """One question with its (optional) annotation and target."""

    question_id: int
    image_id: int
    question: str
    image_path: str
    answers: list[str] | None = None  # the 10 raw annotator answers
    labels: list[int] | None = None
    scores: list[float] | None = None


def _check_fields(path: str, kind: str, index: int, rec: Any, fields: dict[str, type]) -> None:
    if not isinstance(rec, dict):
        raise DataError(f"{path}: {kind}[{index}] is not an object: {rec!r:.100}")
    for key, typ in fields.items():
        if not isinstance(rec.get(key), typ) or isinstance(rec.get(key), bool):
            raise DataError(f"{path}: {kind}[{index}] has no {typ.__name__} {key!r} (record {rec!r:.200})")


class VQAv2(Dataset):
    """VQAv2 questions of one file, with targets when annotations and a vocabulary are given.

    Items are dicts ``{"image", "image_path", "question", "question_id", "image_id"}``, plus
    ``"tokens"`` (tokenizer output) and ``"target"`` (dense float tensor over the vocabulary with the
    soft scores) when available. :meth:`gt_answers` gives the raw annotations for the scorer.

    Args:
        questions_json: questions file.
        image_root: folder holding ``train2014/``, ``val2014/``, ``test2015/``.
        annotations_json: annotations file (train/val); ``None`` for test-dev/test.
        answer_vocab: answer list (label order); with annotations it enables targets.
        tokenizer: optional callable applied to the question.
        transform: optional callable applied to the PIL image.
        image_subdir: image folder; default from the file's ``data_subtype`` (or its file name).
        image_ids: keep only questions about these images (e.g. from :func:`rest_val_split`).
        quirks: ``"fixed"`` counts normalised answers, ``"official"`` raw ones (see module docstring).
        drop_unlabeled: drop questions none of whose answers is in the vocabulary (official); their
            number is ``num_unlabeled``.
        check_images: check at construction that every image file exists.
        skip_bad: skip malformed or unmatched records and (with ``check_images``) questions about
            missing images instead of raising; counted in ``num_skipped``.
    """

    def __init__(
        self,
        questions_json: str | os.PathLike,
        image_root: str | os.PathLike,
        annotations_json: str | os.PathLike | None = None,
        answer_vocab: Sequence[str] | None = None,
        tokenizer: Callable[[str], Any] | None = None,
        transform: Callable | None = None,
        image_subdir: str | None = None,
        image_ids: Iterable[int] | None = None,
        quirks: str = "fixed",
        drop_unlabeled: bool = True,
        check_images: bool = False,
        skip_bad: bool = False,
    ):
        if quirks not in QUIRKS:
            raise ValueError(f"unknown quirks {quirks!r}; expected one of {QUIRKS}")
        self.questions_json = os.fspath(questions_json)
        self.annotations_json = os.fspath(annotations_json) if annotations_json is not None else None
        self.image_root = os.fspath(image_root)
        self.tokenizer = tokenizer
        self.transform = transform
        self.quirks = quirks
        self.drop_unlabeled = drop_unlabeled
        self.skip_bad = skip_bad
        self.answer_vocab = list(answer_vocab) if answer_vocab is not None else None
        self.answer_to_label = {a: i for i, a in enumerate(self.answer_vocab or [])}
        self.num_skipped = 0
        self.num_unlabeled = 0
        self._annotations: dict[int, dict] = {}

        meta, questions = _load_json(self.questions_json, "questions")
        self.image_subdir = image_subdir or self._infer_subdir(meta)
        examples = self._read_questions(questions)
        if self.annotations_json is not None:
            examples = self._attach_annotations(examples)
        if image_ids is not None:
            keep = set(image_ids)
            examples = [ex for ex in examples if ex.image_id in keep]
        if check_images:
            examples = self._check_images(examples)
        if not examples:
            raise DataError(f"no usable questions in {self.questions_json} (after filters)")
        self.examples = examples

    def _bad(self, message: str) -> None:
        if not self.skip_bad:
            raise DataError(message)
        self.num_skipped += 1

    def _infer_subdir(self, meta: dict) -> str:
        subtype = meta.get("data_subtype")
        if subtype not in _SUBDIR_OF_SUBTYPE:
            match = _SUBTYPE_IN_NAME.search(os.path.basename(self.questions_json))
            subtype = match.group(1) if match else None
        if subtype is None:
            raise DataError(f"cannot tell the image folder of {self.questions_json} (no 'data_subtype'); "
                            f"pass image_subdir='train2014' / 'val2014' / 'test2015'")
        return _SUBDIR_OF_SUBTYPE[subtype]

    def _read_questions(self, questions: list) -> list[VQAExample]:
        examples, seen = [], set()
        fields = {"image_id": int, "question": str, "question_id": int}
        for index, q in enumerate(questions):
            try:
                _check_fields(self.questions_json, "questions", index, q, fields)
                if q["question_id"] in seen:
                    raise DataError(f"{self.questions_json}: questions[{index}] repeats question_id {q['question_id']}")
            except DataError as exn:
                self._bad(str(exn))
                continue
            seen.add(q["question_id"])
            examples.append(VQAExample(q["question_id"], q["image_id"], q["question"],
                                       vqa_image_path(self.image_subdir, q["image_id"])))
        return examples

    def _attach_annotations(self, examples: list[VQAExample]) -> list[VQAExample]:
        path = self.annotations_json
        _, annotations = _load_json(path, "annotations")
        by_qid = {ex.question_id: ex for ex in examples}
        fields = {"question_id": int, "image_id": int, "answers": list}
        for index, ann in enumerate(annotations):
            try:
                _check_fields(path, "annotations", index, ann, fields)
                qid = ann["question_id"]
                answers = [a.get("answer") if isinstance(a, dict) else None for a in ann["answers"]]
                if not answers or not all(isinstance(a, str) for a in answers):
                    raise DataError(f"{path}: annotations[{index}] (question_id {qid}) has no list of "
                                    f"{{'answer': str}} answers")
                if qid not in by_qid:
                    raise DataError(f"{path}: annotations[{index}] is for question_id {qid}, which is not in "
                                    f"{self.questions_json}")
                if qid in self._annotations:
                    raise DataError(f"{path}: annotations[{index}] repeats question_id {qid}")
                if by_qid[qid].image_id != ann["image_id"]:
                    raise DataError(f"{path}: annotations[{index}] has image_id {ann['image_id']} but question "
                                    f"{qid} is about image {by_qid[qid].image_id}")
            except DataError as exn:
                self._bad(str(exn))
                continue
            self._annotations[qid] = ann
            by_qid[qid].answers = answers

        kept = []
        for ex in examples:
            if ex.answers is None:
                self._bad(f"{path} has no annotation for question_id {ex.question_id} (image {ex.image_id}) "
                          f"of {self.questions_json}")
                continue
            if self.answer_vocab is not None:
                ex.labels, ex.scores = self._targets(ex.answers)
                if not ex.labels and self.drop_unlabeled:
                    self.num_unlabeled += 1
                    continue
            kept.append(ex)
        return kept

    def _targets(self, answers: list[str]) -> tuple[list[int], list[float]]:
        if self.quirks == "fixed":
            answers = [_normalize(a) for a in answers]
        counts = Counter(answers)
        labels, scores = [], []
        for answer, n in counts.items():
            if answer in self.answer_to_label:
                labels.append(self.answer_to_label[answer])
                scores.append(answer_score(n))
        return labels, scores

    def _check_images(self, examples: list[VQAExample]) -> list[VQAExample]:
        kept = []
        for ex in examples:
            full = os.path.join(self.image_root, ex.image_path)
            if os.path.isfile(full):
                kept.append(ex)
            else:
                self._bad(f"{self.questions_json}: question_id {ex.question_id} points to a missing image {full}")
        return kept

    def gt_answers(self) -> dict[int, dict]:
        """Raw annotations for the scorer: ``{question_id: annotation dict}`` of the kept questions."""
        return {ex.question_id: self._annotations[ex.question_id] for ex in self.examples
                if ex.question_id in self._annotations}

    @property
    def num_classes(self) -> int:
        return len(self.answer_vocab or [])

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        ex = self.examples[index]
        image = load_image(os.path.join(self.image_root, ex.image_path), record=f"question_id {ex.question_id}")
        item = {
            "image": self.transform(image) if self.transform is not None else image,
            "image_path": ex.image_path,
            "question": ex.question,
            "question_id": ex.question_id,
            "image_id": ex.image_id,
        }
        if self.tokenizer is not None:
            item["tokens"] = self.tokenizer(ex.question)
        if ex.labels is not None:
            target = torch.zeros(self.num_classes)
            target[ex.labels] = torch.tensor(ex.scores, dtype=torch.float32)
            item["target"] = target
        return item
