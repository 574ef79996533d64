"""Per-image results of semantic segmentation: mmseg's ``IoUMetric`` that also keeps each image's counts.

mIoU is not a mean over images: it is, per class, the pixels of all images where prediction and label
agree over the pixels where either has the class. So the per-item frame of a segmentation evaluation
keeps each image's counts (``intersect_<c>``, ``union_<c>``, ``label_<c>`` for class index ``c``) and its
pixel accuracy, from which the aggregates (and resampled ones) are sums: :func:`aggregates_from_items`.
``harness.dense.run_dense`` swaps this metric in for ``IoUMetric`` and logs the frame to the run as
``per_item/<split>.csv.gz``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from tasks.atomic import atomic_path

METRIC_TYPE = "PerImageIoUMetric"


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


def aggregates_from_items(items: pd.DataFrame) -> dict[str, float]:
    """mmseg's ``aAcc`` and ``mIoU`` (in points, NaN classes skipped) from the per-image counts."""
    classes = sorted(int(c.removeprefix("union_")) for c in items.columns if c.startswith("union_"))
    intersect = np.array([items[f"intersect_{c}"].sum() for c in classes], dtype=float)
    union = np.array([items[f"union_{c}"].sum() for c in classes], dtype=float)
    label = np.array([items[f"label_{c}"].sum() for c in classes], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersect / union
    return {"aAcc": round(float(intersect.sum() / label.sum()) * 100, 2),
            "mIoU": round(float(np.nanmean(iou)) * 100, 2)}


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
