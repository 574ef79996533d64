"""VQAv2 metrics: the official accuracy, BEiT-3's training-time ``VQAScore`` and the test-dev file.

:func:`vqa_accuracy` re-implements GT-Vision-Lab/VQA ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``
(the 2021 version) per question:

1. newlines and tabs become spaces and the text is stripped, for the 10 answers and the prediction;
2. only if the 10 stripped answers are **not all identical** are the answers and the prediction
   normalised (:func:`tasks.metrics.vqa_normalize.normalize_answer`: punctuation, number words,
   articles, contractions); otherwise the prediction must equal them exactly (``"Yes"`` scores 0
   against ten ``"yes"``);
3. for each of the 10 answers, the matches of the prediction among the *other* answers, ``min(1,
   matches / 3)``; the question's accuracy is the mean of the 10 values. "Other" follows the official
   ``item != gtAnsDatum`` comparison of the answer dicts (distinct ``answer_id`` in the real files);
4. reports are ``round(100 * mean, 2)`` overall, per answer type and per question type; per-question
   values stay unrounded for the averages.

The official ``VQA.loadRes`` refuses results whose question ids differ from the annotation set; so do
we (``partial=True`` scores only the predicted questions). :func:`vqa_score` is the soft score of the
arg-max answer that BEiT-3 (after ViLT) logs during training and validation; its targets come from the
data reader, whose ``quirks`` switch decides how they are counted (``tasks.data.vqa``).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd
import torch

from tasks.metrics._checks import check_not_empty
from tasks.metrics.vqa_normalize import normalize_answer

__all__ = ["question_accuracy", "question_scores", "vqa_accuracy", "vqa_score", "vqa_submission"]

_MAX_IDS_SHOWN = 10


def _strip(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _answer_dicts(answers: Sequence[Any], qid: Any) -> list[dict]:
    """Answers as dicts; plain strings get distinct ``answer_id`` values (so each is its own answer)."""
    if not isinstance(answers, Sequence) or isinstance(answers, str) or not answers:
        raise ValueError(f"question_id {qid!r}: 'answers' must be a non-empty list, got {answers!r}")
    out = []
    for index, answer in enumerate(answers):
        if isinstance(answer, str):
            answer = {"answer": answer, "answer_id": index + 1}
        if not isinstance(answer, Mapping) or not isinstance(answer.get("answer"), str):
            raise ValueError(f"question_id {qid!r}: answer {index} has no 'answer' text: {answer!r}")
        out.append(dict(answer))
    return out


def question_accuracy(prediction: str, answers: Sequence[Any], question_id: Any = None) -> float:
    """Official accuracy of one prediction against its ground-truth answers, in [0, 1] (unrounded).

    Args:
        prediction: the predicted answer text.
        answers: the annotation's ``answers`` (dicts with ``answer``, as in the VQA files) or strings.
        question_id: only used in error messages.
    """
    if not isinstance(prediction, str):
        raise TypeError(f"question_id {question_id!r}: the prediction must be a str, got {prediction!r}")
    gts = _answer_dicts(answers, question_id)
    for gt in gts:
        gt["answer"] = _strip(gt["answer"])
    predicted = _strip(prediction)
    if len({gt["answer"] for gt in gts}) > 1:
        for gt in gts:
            gt["answer"] = normalize_answer(gt["answer"])
        predicted = normalize_answer(predicted)
    values = []
    for gt in gts:
        matches = sum(1 for other in gts if other != gt and other["answer"] == predicted)
        values.append(min(1.0, matches / 3.0))
    return sum(values) / len(values)


def _annotation_table(annotations: Any) -> dict[Any, Mapping]:
    if isinstance(annotations, Mapping) and "annotations" in annotations:  # a whole annotations file
        annotations = annotations["annotations"]
    if isinstance(annotations, Mapping):
        return dict(annotations)
    table = {}
    for index, record in enumerate(annotations):
        if not isinstance(record, Mapping) or "question_id" not in record:
            raise ValueError(f"annotation {index} has no 'question_id': {record!r}")
        table[record["question_id"]] = record
    return table


def _prediction_table(predictions: Any) -> dict[Any, str]:
    if isinstance(predictions, Mapping):
        return dict(predictions)
    table = {}
    for index, record in enumerate(predictions):
        if not isinstance(record, Mapping) or "question_id" not in record or "answer" not in record:
            raise ValueError(f"prediction {index} must be {{'question_id', 'answer'}}, got {record!r}")
        table[record["question_id"]] = record["answer"]
    return table


def _shown(ids: Iterable[Any]) -> str:
    ids = list(ids)
    more = f" (and {len(ids) - _MAX_IDS_SHOWN} more)" if len(ids) > _MAX_IDS_SHOWN else ""
    return ", ".join(repr(i) for i in ids[:_MAX_IDS_SHOWN]) + more


def _scored_questions(predictions: Any, annotations: Any, split: str, partial: bool):
    """``(question_id, prediction, annotation, accuracy)`` per predicted question, after the official
    ``loadRes`` checks (every predicted id annotated; every annotated id predicted unless ``partial``)."""
    preds = _prediction_table(predictions)
    gts = _annotation_table(annotations)
    check_not_empty(len(preds), split, "VQA predictions")
    unknown = [qid for qid in preds if qid not in gts]
    if unknown:
        by_text = {str(qid) for qid in gts}
        hint = (" (the ids look like strings vs integers: convert the prediction keys)"
                if any(str(qid) in by_text for qid in unknown) else "")
        raise ValueError(
            f"split {split!r}: {len(unknown)} predicted question_id(s) are not in the annotations: "
            f"{_shown(unknown)}{hint}. Score predictions against the annotations of the same split."
        )
    if not partial:
        missing = [qid for qid in gts if qid not in preds]
        if missing:
            raise ValueError(
                f"split {split!r}: {len(missing)} annotated question(s) have no prediction: {_shown(missing)}. "
                "The official scorer needs one answer per question; pass partial=True to score a subset."
            )
    for qid, prediction in preds.items():
        record = gts[qid]
        if not isinstance(record, Mapping) or "answers" not in record:
            raise ValueError(f"split {split!r}: annotation of question_id {qid!r} has no 'answers'")
        yield qid, prediction, record, question_accuracy(prediction, record["answers"], qid)


def question_scores(
    predictions: Mapping[Any, str] | Sequence[Mapping],
    annotations: Mapping[Any, Mapping] | Sequence[Mapping] | Mapping[str, Any],
    *,
    split: str = "eval",
    partial: bool = False,
) -> pd.DataFrame:
    """Per-question official accuracy, one row per predicted question (the checks of :func:`vqa_accuracy`).

    Returns:
        Columns ``question_id``, ``prediction``, ``answer_type``, ``question_type`` (``None`` where the
        annotation has none) and ``accuracy`` in percent, unrounded: ``round(mean, 2)`` of it is
        :func:`vqa_accuracy`'s ``overall``, grouped by answer type its ``per_answer_type``.
    """
    rows = [{"question_id": qid, "prediction": prediction, "answer_type": record.get("answer_type"),
             "question_type": record.get("question_type"), "accuracy": 100.0 * accuracy}
            for qid, prediction, record, accuracy in _scored_questions(predictions, annotations, split, partial)]
    return pd.DataFrame(rows, columns=["question_id", "prediction", "answer_type", "question_type", "accuracy"])


def vqa_accuracy(
    predictions: Mapping[Any, str] | Sequence[Mapping],
    annotations: Mapping[Any, Mapping] | Sequence[Mapping] | Mapping[str, Any],
    *,
    split: str = "eval",
    partial: bool = False,
    ndigits: int = 2,
) -> dict[str, Any]:
    """Official VQA accuracy of ``predictions``.

    Args:
        predictions: ``{question_id: answer}`` or the submission list ``[{"question_id", "answer"}]``.
        annotations: ``{question_id: annotation}`` (e.g. ``VQAv2.gt_answers()``), the list of
            annotation records, or a whole ``v2_mscoco_*_annotations.json`` dict. Records need
            ``answers``; ``answer_type`` / ``question_type`` feed the per-type reports.
        split: the split's name, used in error messages.
        partial: score only the predicted questions; by default every annotated question must have a
            prediction, as the official ``loadRes`` requires.
        ndigits: rounding of the reported percentages (official 2).

    Returns:
        ``{"overall", "per_answer_type": {type: acc}, "per_question_type": {type: acc}, "num_questions"}``
        with accuracies in percent.

    Raises:
        ValueError: a predicted question id is not in the annotations (named), annotated questions
            lack a prediction (without ``partial``), or a record is malformed.
        EmptySplitError: no predictions.
    """
    per_question, by_answer_type, by_question_type = [], {}, {}
    for _, _, record, accuracy in _scored_questions(predictions, annotations, split, partial):
        per_question.append(accuracy)
        if "answer_type" in record:
            by_answer_type.setdefault(record["answer_type"], []).append(accuracy)
        if "question_type" in record:
            by_question_type.setdefault(record["question_type"], []).append(accuracy)

    def percent(values: list[float]) -> float:
        return round(100.0 * sum(values) / len(values), ndigits)

    return {
        "overall": percent(per_question),
        "per_answer_type": {kind: percent(v) for kind, v in by_answer_type.items()},
        "per_question_type": {kind: percent(v) for kind, v in by_question_type.items()},
        "num_questions": len(per_question),
    }


def vqa_score(logits: torch.Tensor, targets: torch.Tensor, split: str = "eval") -> float:
    """BEiT-3's training-time ``VQAScore`` in percent: mean soft target score of the arg-max answer.

    Args:
        logits: (N, num_classes).
        targets: (N, num_classes) soft scores (0, 0.3, 0.6, 0.9, 1.0 per answer) from the data reader.
    """
    if logits.dim() != 2 or logits.shape != targets.shape:
        raise ValueError(f"logits and targets must both be (N, num_classes); got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")
    check_not_empty(logits.shape[0], split, "VQA questions")
    best = logits.detach().float().argmax(dim=1, keepdim=True)
    scores = targets.detach().float().gather(1, best)
    return 100.0 * scores.sum().item() / logits.shape[0]


def vqa_submission(
    predictions: Mapping[Any, str],
    question_ids: Iterable[Any] | None = None,
    split: str = "test-dev",
) -> list[dict[str, Any]]:
    """The EvalAI result file: ``[{"question_id": int, "answer": str}, ...]`` in prediction order.

    Args:
        predictions: ``{question_id: answer}``.
        question_ids: the split's question ids; when given, every one must be answered and no other.
        split: used in error messages.
    """
    check_not_empty(len(predictions), split, "VQA predictions")
    rows = []
    for qid, answer in predictions.items():
        if not isinstance(answer, str):
            raise TypeError(f"split {split!r}: the answer of question_id {qid!r} must be a str, got {answer!r}")
        try:
            number = int(qid)
        except (TypeError, ValueError) as error:
            raise ValueError(f"split {split!r}: question_id {qid!r} is not an integer") from error
        rows.append({"question_id": number, "answer": answer})
    if question_ids is not None:
        expected = {int(q) for q in question_ids}
        got = {row["question_id"] for row in rows}
        if got - expected:
            raise ValueError(f"split {split!r}: answers for unknown question_id(s) {_shown(sorted(got - expected))}")
        if expected - got:
            raise ValueError(f"split {split!r}: {len(expected - got)} question(s) have no answer: "
                             f"{_shown(sorted(expected - got))}")
    return rows
