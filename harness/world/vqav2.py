"""VQAv2 on the COCO images of :mod:`.coco_karpathy`: balanced questions, ten annotator answers each, the
official question / annotation files (``test-dev2015`` is the first half of ``test2015``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from . import writers
from .coco_karpathy import CocoImage
from .language import AnswerBalancer, annotator_answers, ask_questions
from .part import Part, stream_rng
from .priors import vqa_prior_baselines
from .profiles import WorldProfile

__all__ = ["build"]

SUBSETS = ("train2014", "val2014", "test2015")


def build(root: Path, prof: WorldProfile, seed: int, images: Sequence[CocoImage]) -> tuple[Part, list[list[str]]]:
    """Write the VQAv2 files about ``images``; return the part and each image's question texts."""
    qrng = stream_rng(seed, "vqa")
    questions: dict[str, list[dict]] = {subset: [] for subset in SUBSETS}
    annotations: dict[str, list[dict]] = {"train2014": [], "val2014": []}
    prior_records: dict[str, list[dict]] = {"train2014": [], "val2014": []}
    balancers = {subset: AnswerBalancer(prof.max_objects, prof.question_families, prof.shapes, prof.colors) for subset in SUBSETS}
    test_images = [image.cocoid for image in images if image.subset == "test2015"]
    test_dev_ids = set(test_images[: math.ceil(prof.vqa_test_images / 2)])
    texts_per_image = []
    for image in images:
        asked = ask_questions(image.scene, qrng, balancers[image.subset], prof.vqa_questions_per_image)
        texts_per_image.append([q.text for q in asked])
        for k, q in enumerate(asked):
            qid = image.cocoid * 1000 + k
            questions[image.subset].append({"image_id": image.cocoid, "question": q.text, "question_id": qid})
            if image.subset == "test2015":
                continue
            answers = annotator_answers(q.answer, q.answer_type, qrng)
            annotations[image.subset].append({
                "question_type": q.question_type, "multiple_choice_answer": q.answer, "answers": answers,
                "image_id": image.cocoid, "answer_type": q.answer_type, "question_id": qid,
            })
            prior_records[image.subset].append({
                "question": q.text, "question_type": q.question_type, "family": q.family,
                "multiple_choice_answer": q.answer, "answers": [a["answer"] for a in answers],
            })

    vqa_dir = root / "coco" / "vqa"
    question_files, annotation_files = {}, {}
    test_dev = [q for q in questions["test2015"] if q["image_id"] in test_dev_ids]
    for subset, subset_questions in list(questions.items()) + [("test-dev2015", test_dev)]:
        path = vqa_dir / f"v2_OpenEnded_mscoco_{subset}_questions.json"
        writers.write_json(writers.vqa_questions_json(subset, subset_questions), path)
        question_files[subset] = path.relative_to(root).as_posix()
    for subset, subset_annotations in annotations.items():
        path = vqa_dir / f"v2_mscoco_{subset}_annotations.json"
        writers.write_json(writers.vqa_annotations_json(subset, subset_annotations), path)
        annotation_files[subset] = path.relative_to(root).as_posix()
    part = Part(
        entry={
            "format": "vqav2",
            "root": "coco",
            "annotations_dir": "coco/vqa",
            "questions": question_files,
            "annotations": annotation_files,
            "images": {"train2014": "coco/train2014", "val2014": "coco/val2014", "test2015": "coco/test2015"},
        },
        counts={
            "questions": {s: len(q) for s, q in questions.items()} | {"test-dev2015": len(test_dev)},
            "images": {"test2015": prof.vqa_test_images},
        },
        baselines=vqa_prior_baselines(prior_records["train2014"], prior_records["val2014"]),
    )
    return part, texts_per_image
