"""Prior-only (image-blind) baselines of the benchmark world, measured on its val/dev splits.

They show how far the text or the label distribution alone goes; a model that learns from images
must beat them. VQA uses the official VQA soft accuracy (answer normalisation + "min(1, matches/3)"
averaged over the 10 leave-one-out annotator subsets).
"""

from __future__ import annotations

import functools
import re
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence

import numpy as np

__all__ = [
    "normalize_vqa_answer",
    "vqa_soft_accuracy",
    "vqa_prior_baselines",
    "label_prior_baselines",
    "majority_accuracy",
    "segmentation_prior",
]

# Official VQA evaluation rules (vqaEval.py), reduced to what can occur in answers: punctuation,
# number words and articles. The world's answers contain no contractions.
_NUMBER_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
               "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


@functools.lru_cache(maxsize=4096)
def normalize_vqa_answer(text: str) -> str:
    """``processPunctuation`` then ``processDigitArticle`` of the official VQA evaluation."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD_STRIP.sub("", out)
    words = [_NUMBER_MAP.get(w, w) for w in out.lower().split()]
    return " ".join(w for w in words if w not in _ARTICLES)


def vqa_soft_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction against the annotators' raw answers."""
    pred = normalize_vqa_answer(prediction)
    gts = [normalize_vqa_answer(a) for a in answers]
    accs = []
    for i in range(len(gts)):
        matches = sum(g == pred for j, g in enumerate(gts) if j != i)
        accs.append(min(1.0, matches / 3.0))
    return float(np.mean(accs))


def _best_by_key(train: Sequence[tuple[Hashable, str]]) -> dict[Hashable, str]:
    counts: dict[Hashable, Counter] = defaultdict(Counter)
    for key, answer in train:
        counts[key][answer] += 1
    # Ties broken by the answer string so the result does not depend on record order.
    return {k: min(c, key=lambda a: (-c[a], a)) for k, c in counts.items()}


def vqa_prior_baselines(train: Sequence[dict], val: Sequence[dict]) -> dict:
    """Image-blind VQA baselines on ``val``.

    Each record has ``question_type``, ``family``, ``question``, ``multiple_choice_answer`` and
    ``answers`` (the 10 raw strings). Returns soft accuracies of: the most frequent train answer
    (``majority``); the best answer per ``question_type`` (``per_question_type``, the usual
    "answer prior" baseline); per generating family (``per_family``); per exact question text, falling
    back to the question type (``per_question``).
    """
    if not train or not val:
        raise ValueError("VQA prior baselines need non-empty train and val questions")
    mc = [normalize_vqa_answer(r["multiple_choice_answer"]) for r in train]
    overall = min(Counter(mc), key=lambda a: (-Counter(mc)[a], a))
    by_type = _best_by_key([(r["question_type"], a) for r, a in zip(train, mc)])
    by_family = _best_by_key([(r["family"], a) for r, a in zip(train, mc)])
    by_question = _best_by_key([(r["question"], a) for r, a in zip(train, mc)])

    def score(predict) -> float:
        return round(float(np.mean([vqa_soft_accuracy(predict(r), r["answers"]) for r in val])), 4)

    return {
        "majority": score(lambda r: overall),
        "per_question_type": score(lambda r: by_type.get(r["question_type"], overall)),
        "per_family": score(lambda r: by_family.get(r["family"], overall)),
        "per_question": score(lambda r: by_question.get(r["question"], by_type.get(r["question_type"], overall))),
    }


def majority_accuracy(train_labels: Sequence[Hashable], val_labels: Sequence[Hashable]) -> float:
    """Accuracy on ``val_labels`` of always predicting the most frequent train label."""
    counts = Counter(train_labels)
    best = min(counts, key=lambda a: (-counts[a], str(a)))
    return round(float(np.mean([v == best for v in val_labels])), 4)


def label_prior_baselines(train: Sequence[dict], val: Sequence[dict], keys: Sequence[str]) -> dict:
    """Accuracy of the majority label overall and per value of each key in ``keys`` (backing off to
    the overall majority for unseen values). Records have ``label`` and the keys."""
    out = {"majority": majority_accuracy([r["label"] for r in train], [r["label"] for r in val])}
    overall = Counter(r["label"] for r in train).most_common(1)[0][0]
    for key in keys:
        best = _best_by_key([(r[key], r["label"]) for r in train])
        out[f"per_{key}"] = round(float(np.mean([best.get(r[key], overall) == r["label"] for r in val])), 4)
    return out


def segmentation_prior(train_hist: np.ndarray, val_labels: Sequence[np.ndarray], num_classes: int) -> dict:
    """aAcc and mIoU on val of predicting the most frequent train class at every pixel, under
    ``reduce_zero_label`` (label 0 ignored, 1..K scored as 0..K-1)."""
    best = int(np.argmax(train_hist[1:])) + 1
    inter = np.zeros(num_classes)
    union = np.zeros(num_classes)
    correct = total = 0
    for label in val_labels:
        valid = label > 0
        gt = label[valid]
        correct += int((gt == best).sum())
        total += int(valid.sum())
        for c in range(1, num_classes + 1):
            inter[c - 1] += int(((gt == c) & (gt == best)).sum())
            union[c - 1] += int(((gt == c) | (best == c)).sum())
    present = union > 0
    return {
        "majority_class": best,
        "aAcc": round(correct / max(total, 1), 4),
        "mIoU": round(float(np.mean(inter[present] / union[present])), 4),
    }
