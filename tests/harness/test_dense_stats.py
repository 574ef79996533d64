"""Per-image dense metrics (COCO AP, mIoU) recomputed on weighted images, and their paired bootstrap."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pandas as pd
import pytest

from harness import dense_items, stats


def _box(rng, size=96):
    x, y = rng.uniform(0, size - 30, size=2)
    w, h = rng.uniform(8, 30, size=2)
    return [float(x), float(y), float(w), float(h)]


def _coco_files(tmp_path, rng, images=12, noise=4.0, misses=0.3):
    """A ground truth of boxes over three categories and detections that jitter, miss and hallucinate."""
    gt = {"images": [{"id": i + 1, "width": 96, "height": 96, "file_name": f"{i}.jpg"} for i in range(images)],
          "categories": [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)], "annotations": []}
    results = []
    ann = 1
    for image in range(1, images + 1):
        for _ in range(rng.integers(1, 5)):
            box, category = _box(rng), int(rng.integers(1, 4))
            gt["annotations"].append({"id": ann, "image_id": image, "category_id": category, "bbox": box,
                                      "area": box[2] * box[3], "iscrowd": 0})
            ann += 1
            if rng.random() > misses:
                jittered = [box[0] + rng.normal(0, noise), box[1] + rng.normal(0, noise), box[2], box[3]]
                results.append({"image_id": image, "category_id": category, "bbox": jittered,
                                "score": float(rng.random())})
        for _ in range(rng.integers(0, 3)):  # false positives
            results.append({"image_id": image, "category_id": int(rng.integers(1, 4)), "bbox": _box(rng),
                            "score": float(rng.random() * 0.5)})
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(results))
    return tmp_path / "gt.json", tmp_path / "dt.json", gt, results


def _pycocotools_ap(gt_file, results) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(gt_file))
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return 100.0 * evaluation.stats[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_detection_statistic_at_unit_weights_is_pycocotools_ap(tmp_path, seed):
    gt_file, dt_file, _gt, results = _coco_files(tmp_path, np.random.default_rng(seed))
    metric = dense_items.detection_statistic(gt_file, dt_file, "bbox")
    assert metric.value == pytest.approx(_pycocotools_ap(gt_file, results), abs=1e-9)
    assert 0 < metric.value < 100


def test_a_weight_of_two_is_the_image_counted_twice(tmp_path):
    """Weights are multiplicities: doubling an image equals the AP of a set holding it twice."""
    rng = np.random.default_rng(3)
    gt_file, dt_file, gt, results = _coco_files(tmp_path, rng, images=6)
    weights = np.array([[2.0, 1.0, 0.0, 1.0, 1.0, 1.0]])
    # The same set written out: image 1 twice (as a new image 7), image 3 left out.
    doubled = {**gt, "images": [i for i in gt["images"] if i["id"] != 3] + [{**gt["images"][0], "id": 7}],
               "annotations": [a for a in gt["annotations"] if a["image_id"] != 3]}
    next_id = max(a["id"] for a in gt["annotations"]) + 1
    for a in gt["annotations"]:
        if a["image_id"] == 1:
            doubled["annotations"].append({**a, "id": next_id, "image_id": 7})
            next_id += 1
    doubled_results = [r for r in results if r["image_id"] != 3] + [{**r, "image_id": 7} for r in results
                                                                      if r["image_id"] == 1]
    (tmp_path / "doubled.json").write_text(json.dumps(doubled))
    expected = _pycocotools_ap(tmp_path / "doubled.json", doubled_results)
    found = dense_items.detection_statistic(gt_file, dt_file, "bbox").statistic(weights)[0]
    # Equal-score ties between an image and its copy may be ordered differently: a hair apart at most.
    assert found == pytest.approx(expected, abs=0.05)


def test_no_detections_is_ap_zero(tmp_path):
    gt_file, _dt, _gt, _results = _coco_files(tmp_path, np.random.default_rng(4))
    assert dense_items.detection_statistic(gt_file, None, "bbox").value == 0.0


def test_segmentation_statistic_matches_the_aggregate_and_skips_absent_classes():
    items = pd.DataFrame({"item_id": ["b", "a", "c"], "cluster_id": ["b", "a", "c"], "prediction": "",
                          "pixel_accuracy": 0.0,
                          "intersect_0": [5, 3, 0], "union_0": [10, 4, 0], "label_0": [8, 4, 0],
                          "intersect_1": [0, 0, 6], "union_1": [0, 0, 9], "label_1": [0, 0, 7]})
    metric = dense_items.segmentation_statistic(items)
    assert metric.images == ("a", "b", "c")
    assert metric.value == pytest.approx(dense_items.aggregates_from_items(items)["mIoU"], abs=0.005)
    # Without image c, class 1 is in no image: skipped, not counted as IoU 0.
    assert metric.statistic(np.array([[1.0, 1.0, 0.0]]))[0] == pytest.approx(100 * 8 / 14)


def test_paired_bootstrap_statistic_finds_a_shift_and_not_an_equal():
    rng = np.random.default_rng(0)
    clusters = 200
    base = rng.random(clusters)

    def mean_of(values):
        return lambda w: (w @ values) / w.sum(axis=1) * 100

    better = [mean_of(base + 0.1), mean_of(base + 0.12)]
    same = [mean_of(base), mean_of(base)]
    shifted = stats.paired_bootstrap_statistic(better, same, clusters, n_resamples=500)
    assert shifted.detectable and shifted.low > 0 and shifted.estimate == pytest.approx(11.0)
    assert shifted.values_a == pytest.approx((100 * (base.mean() + 0.1), 100 * (base.mean() + 0.12)))
    equal = stats.paired_bootstrap_statistic(same, same, clusters, n_resamples=500)
    assert (equal.estimate, equal.low, equal.high) == (0.0, 0.0, 0.0) and not equal.detectable
    with pytest.raises(ValueError, match="paired seeds"):
        stats.paired_bootstrap_statistic(better, same[:1], clusters)
