"""Per-image results of dense evaluations, and their metrics as functions of image weights.

Neither mIoU nor COCO AP is a mean over images, so a bootstrap of them cannot average per-image
scores: each resampled evaluation set recomputes the metric. What a run keeps per image is what that
recomputation needs:

- Semantic segmentation: each image's counts (``intersect_<c>``, ``union_<c>``, ``label_<c>`` for
  class index ``c``) and its pixel accuracy. mIoU is, per class, the pixels of all images where
  prediction and label agree over the pixels where either has the class: sums of the counts
  (:func:`aggregates_from_items`, :func:`segmentation_statistic`). ``harness.dense.run_dense`` swaps
  :data:`METRIC_TYPE` in for mmseg's ``IoUMetric`` and logs the frame as ``per_item/<split>.csv.gz``.
- Detection / instance segmentation: the detections themselves (mmdet's ``CocoMetric`` results
  files, ``per_item/<split>.bbox.json`` and ``.segm.json``) beside the ground truth they were scored
  against (``per_item/<split>.gt.json``). pycocotools matches them once per image
  (``COCOeval.evaluate``); :func:`detection_statistic` then accumulates precision/recall with each
  image counted as often as it was drawn, exactly as ``COCOeval.accumulate`` does for weight 1.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from tasks.atomic import atomic_path

METRIC_TYPE = "PerImageIoUMetric"
# COCO AP's recall thresholds (pycocotools ``Params.recThrs``) and the detections per image it keeps.
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
AP_MAX_DETECTIONS = 100


@dataclass(frozen=True)
class PerImageMetric:
    """A run's metric on an evaluation set, recomputable on any weighting of its images.

    Args:
        images: the images' keys, in the order the weights follow.
        statistic: weights of shape (replicates, images) -> the metric per replicate, in points.
    """

    images: tuple[str, ...]
    statistic: Callable[[np.ndarray], np.ndarray]

    @property
    def value(self) -> float:
        """The metric on the evaluation set as it is (every weight 1)."""
        return float(self.statistic(np.ones((1, len(self.images))))[0])


# ----------------------------------------------------------------------------- semantic segmentation
def items_frame(results: Sequence[tuple], num_classes: int) -> pd.DataFrame:
    """One row per image from ``(intersect, union, pred_area, label_area, img_path)`` tuples."""
    rows = []
    for intersect, union, _pred, label, img_path in results:
        intersect, union, label = (np.asarray(t.cpu() if hasattr(t, "cpu") else t, dtype=np.int64)
                                   for t in (intersect, union, label))
        name = Path(img_path).stem
        row: dict[str, Any] = {"item_id": name, "cluster_id": name, "prediction": "",
                               "pixel_accuracy": float(intersect.sum() / max(label.sum(), 1))}
        for c in range(num_classes):
            row.update({f"intersect_{c}": int(intersect[c]), f"union_{c}": int(union[c]), f"label_{c}": int(label[c])})
        rows.append(row)
    return pd.DataFrame(rows)


def _class_counts(items: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image (images, classes) arrays of intersect, union and label pixels."""
    classes = sorted(int(c.removeprefix("union_")) for c in items.columns if c.startswith("union_"))
    return tuple(items[[f"{kind}_{c}" for c in classes]].to_numpy(dtype=float)
                 for kind in ("intersect", "union", "label"))


def aggregates_from_items(items: pd.DataFrame) -> dict[str, float]:
    """mmseg's ``aAcc`` and ``mIoU`` (in points, NaN classes skipped) from the per-image counts."""
    intersect, union, label = (counts.sum(axis=0) for counts in _class_counts(items))
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersect / union
    return {"aAcc": round(float(intersect.sum() / label.sum()) * 100, 2),
            "mIoU": round(float(np.nanmean(iou)) * 100, 2)}


def segmentation_statistic(items: pd.DataFrame) -> PerImageMetric:
    """mIoU (points, unrounded) of a per-image counts frame under any image weights; a class that no
    weighted image has in prediction or label is skipped, as mmseg skips it."""
    items = items.astype({"item_id": str}).sort_values("item_id")
    if items["item_id"].duplicated().any():
        raise ValueError("the per-image segmentation frame has duplicate item ids")
    intersect, union, _label = _class_counts(items)

    def miou(weights: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = (weights @ intersect) / (weights @ union)
            return np.nanmean(iou, axis=1) * 100.0

    return PerImageMetric(tuple(items["item_id"]), miou)


# ----------------------------------------------------------------------------- detection
@dataclass(frozen=True)
class _Matched:
    """One category's detections (all images, best score first) matched at every IoU threshold."""

    image: np.ndarray        # (detections,) index of the detection's image
    true: np.ndarray         # (thresholds, detections) matched and not ignored
    false: np.ndarray        # (thresholds, detections) unmatched and not ignored
    ground_truth: np.ndarray  # (images,) ground-truth objects that count (not ignored)


def _matched_categories(gt_file: str | os.PathLike, results_file: str | os.PathLike | None,
                        iou_type: str) -> tuple[list[int], list[_Matched]]:
    """pycocotools' per-image matching (area "all", at most :data:`AP_MAX_DETECTIONS` per image)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        ground_truth = COCO(str(gt_file))
        image_ids = sorted(ground_truth.getImgIds())
        results = json.loads(Path(results_file).read_text(encoding="utf-8")) if results_file is not None else []
        if results:
            detections = ground_truth.loadRes(results)
        else:  # no detection at all (mmdet writes no results file then): AP 0 wherever an object exists
            detections = COCO()
            detections.dataset = {"images": ground_truth.dataset["images"], "categories":
                                  ground_truth.dataset["categories"], "annotations": []}
            detections.createIndex()
        evaluation = COCOeval(ground_truth, detections, iou_type)
        evaluation.params.imgIds = image_ids
        evaluation.params.maxDets = [AP_MAX_DETECTIONS]
        evaluation.params.areaRng = evaluation.params.areaRng[:1]
        evaluation.params.areaRngLbl = evaluation.params.areaRngLbl[:1]
        evaluation.evaluate()
    params = evaluation.params
    thresholds = len(params.iouThrs)
    categories = []
    for k in range(len(params.catIds)):
        per_image = evaluation.evalImgs[k * len(image_ids):(k + 1) * len(image_ids)]
        scores, image, true, false = [], [], [], []
        ground = np.zeros(len(image_ids))
        for i, entry in enumerate(per_image):
            if entry is None:
                continue
            kept = slice(0, AP_MAX_DETECTIONS)
            matches, ignored = entry["dtMatches"][:, kept], entry["dtIgnore"][:, kept].astype(bool)
            scores.append(np.asarray(entry["dtScores"][kept], dtype=float))
            image.append(np.full(len(scores[-1]), i))
            true.append((matches != 0) & ~ignored)
            false.append((matches == 0) & ~ignored)
            ground[i] = np.count_nonzero(entry["gtIgnore"] == 0)
        if scores:
            order = np.argsort(-np.concatenate(scores), kind="mergesort")
            categories.append(_Matched(np.concatenate(image)[order], np.concatenate(true, axis=1)[:, order],
                                       np.concatenate(false, axis=1)[:, order], ground))
        else:
            empty = np.zeros((thresholds, 0), dtype=bool)
            categories.append(_Matched(np.zeros(0, dtype=int), empty, empty, ground))
    return image_ids, categories


def _interpolated_precision(true_cum: np.ndarray, false_cum: np.ndarray, ground: np.ndarray) -> np.ndarray:
    """Mean precision at :data:`RECALL_THRESHOLDS` per replicate row (``COCOeval.accumulate``)."""
    replicates, count = true_cum.shape
    if count == 0:
        return np.zeros(replicates)
    with np.errstate(divide="ignore", invalid="ignore"):  # a replicate without the category: dropped later
        recall = np.nan_to_num(true_cum / ground[:, None], nan=0.0, posinf=0.0)
    precision = true_cum / (true_cum + false_cum + np.spacing(1))
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]  # the precision envelope
    # One searchsorted for all rows: recall is non-decreasing in each row and lies in [0, 1], so
    # offsetting row r by 2r keeps the rows apart.
    offsets = 2.0 * np.arange(replicates)[:, None]
    at = np.searchsorted((recall + offsets).ravel(), (RECALL_THRESHOLDS[None, :] + offsets).ravel(), side="left")
    at = at.reshape(replicates, -1) - count * np.arange(replicates)[:, None]
    reached = at < count
    values = np.where(reached, np.take_along_axis(precision, np.minimum(at, count - 1), axis=1), 0.0)
    return values.mean(axis=1)


def detection_statistic(gt_file: str | os.PathLike, results_file: str | os.PathLike | None,
                        iou_type: str = "bbox") -> PerImageMetric:
    """COCO AP (IoU 0.50:0.95, all areas, 100 detections per image; points, unrounded) of a results
    file (None: no detections) under any image weights: the image keys are the ground truth's image ids."""
    image_ids, categories = _matched_categories(gt_file, results_file, iou_type)

    def average_precision(weights: np.ndarray) -> np.ndarray:
        per_category = []
        for matched in categories:
            ground = weights @ matched.ground_truth
            if not matched.ground_truth.any():
                continue  # no object of the category anywhere: pycocotools leaves it out
            drawn = weights[:, matched.image]
            per_threshold = [
                _interpolated_precision(np.cumsum(drawn * true, axis=1), np.cumsum(drawn * false, axis=1), ground)
                for true, false in zip(matched.true, matched.false)
            ]
            ap = np.mean(per_threshold, axis=0)
            per_category.append(np.where(ground > 0, ap, np.nan))  # a resample without the category skips it
        if not per_category:
            return np.full(len(weights), np.nan)
        with np.errstate(invalid="ignore"):
            return np.nanmean(np.stack(per_category), axis=0) * 100.0

    return PerImageMetric(tuple(str(i) for i in image_ids), average_precision)


# ----------------------------------------------------------------------------- mmseg metric
def register() -> str:
    """Register :data:`METRIC_TYPE` in mmseg's metric registry (once); returns its type name."""
    from mmseg.evaluation.metrics import IoUMetric
    from mmseg.registry import METRICS

    if METRICS.get(METRIC_TYPE) is not None:
        return METRIC_TYPE

    @METRICS.register_module(name=METRIC_TYPE)
    class PerImageIoUMetric(IoUMetric):
        """``IoUMetric`` that writes each image's counts to ``per_item_file`` (CSV, gzip) when it computes."""

        def __init__(self, per_item_file: str | os.PathLike, **kwargs: Any):
            super().__init__(**kwargs)
            self.per_item_file = Path(per_item_file)

        def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
            before = len(self.results)
            super().process(data_batch, data_samples)
            # The image path rides in the result so that it is gathered across ranks with the counts.
            for index, sample in zip(range(before, len(self.results)), data_samples):
                self.results[index] = (*self.results[index], sample["img_path"])

        def compute_metrics(self, results: list) -> dict[str, float]:
            frame = items_frame(results, len(self.dataset_meta["classes"]))
            with atomic_path(self.per_item_file) as tmp:
                frame.to_csv(tmp, index=False, compression="gzip")
            return super().compute_metrics([r[:4] for r in results])

    return METRIC_TYPE
